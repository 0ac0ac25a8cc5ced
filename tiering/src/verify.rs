//! `cbfs-tier verify`: checking a store, with or without a key, and saying
//! what was and was not proven.

use std::collections::{BTreeMap, BTreeSet};

use cbfs_core::{KeySource, Seed};
use cbfs_format::{Collection, Lockbox, MemberId, Metadata, SegmentId, Summary, layout};
use cbfs_restore::{ObjectSource, Relocations, RestoreOptions, Sink, identify, snapshot_listing};
use cbfs_store::Store;
use serde::Serialize;

use crate::error::{Error, Result, restore_error};
use crate::restore::{TrustOptions, trusted};
use crate::source::StoreSource;

/// One thing `verify` found wrong.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// The object (key) it is about.
    pub object: String,
    /// What is wrong.
    pub error: String,
}

/// What `cbfs-tier verify` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Snapshots whose manifests verified (signed by a trusted writer).
    pub snapshots: u64,
    /// The newest of them.
    pub newest: Option<u64>,
    /// Segments checked against their summaries.
    pub segments: u64,
    /// Members the snapshots reference.
    pub members: u64,
    /// Lockboxes whose structure and capsule were checked.
    pub lockboxes: u64,
    /// Segments no snapshot references (garbage for GC, not a problem).
    pub unreferenced_segments: u64,
    /// Snapshots a trusted retention record forgets, whose manifests are
    /// still in the store (garbage collection deletes them).
    pub forgotten_snapshots: u64,
    /// Members read where relocation records moved them.
    pub relocated_members: u64,
    /// Bytes of all segment objects.
    pub segment_bytes: u64,
    /// Bytes of the members the kept snapshots need.
    pub live_bytes: u64,
    /// Bytes garbage collection could reclaim: segments no kept snapshot
    /// needs whole, and the dead part of the others.
    pub reclaimable_bytes: u64,
    /// Collection records waiting for their second phase: what they will
    /// delete is garbage, not a problem.
    pub pending_collections: Vec<String>,
    /// Entries decrypted (with `--read-data`).
    pub decrypted: u64,
    /// Everything wrong.
    pub problems: Vec<Problem>,
    /// What this check could not prove, said plainly.
    pub not_proven: Vec<String>,
}

/// What `cbfs-tier verify` is asked to do.
pub struct VerifyRequest {
    /// The store spec.
    pub store: String,
    /// What to trust.
    pub trust: TrustOptions,
    /// A key, to decrypt everything it opens (with `read_data`).
    pub identity: Option<KeySource>,
    /// Decrypt every member the identity opens.
    pub read_data: bool,
}

/// Checks a store: every manifest's signature, writer and chain, every
/// object a snapshot needs, every summary against its segment's tar
/// structure and hashes, every lockbox's structure and capsule; that no
/// snapshot the agent's index or the reader's records know of has
/// vanished; with an identity and `read_data`, also decrypts everything
/// that identity can open.
pub async fn verify(req: VerifyRequest) -> Result<VerifyReport> {
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || verify_blocking(&req, rt))
        .await
        .map_err(|e| Error::Usage(format!("the check failed: {e}")))?
}

fn copy(seed: &Seed) -> Seed {
    Seed::from_slice(seed.expose_secret_bytes(), "identity").expect("32 bytes")
}

fn verify_blocking(req: &VerifyRequest, rt: tokio::runtime::Handle) -> Result<VerifyReport> {
    if req.read_data && req.identity.is_none() {
        return Err(Error::Usage("--read-data needs --identity SOURCE".into()));
    }
    let source = StoreSource::new(Store::open(&req.store)?, rt);
    let seed = req
        .identity
        .as_ref()
        .map(|s| s.load(&cbfs_keysource::unlock_from_env()))
        .transpose()?;
    let key_file = match &req.identity {
        Some(KeySource::File(p)) => Some(p.as_path()),
        _ => None,
    };
    let t = trusted(&source, &req.trust, seed.as_ref(), key_file)?;
    let mut report = VerifyReport::default();
    let mut problems = Vec::new();
    let listing = snapshot_listing(&source, &t.trust, 0)
        .map_err(|e| restore_error("cannot list the snapshots", e))?;
    for (object, error) in &listing.ignored {
        problems.push(Problem {
            object: object.clone(),
            error: format!("not trusted, ignored: {error}"),
        });
    }
    report.forgotten_snapshots = listing.forgotten.len() as u64;
    let snaps = listing.kept;
    report.snapshots = snaps.len() as u64;
    report.newest = snaps.last().map(|s| s.sequence());
    let expected = t
        .index_newest
        .into_iter()
        .chain(
            t.records
                .pinned(t.keyset.fs().as_str())
                .map(|p| p.highest_snapshot),
        )
        .max()
        .unwrap_or(0);
    if report.newest.unwrap_or(0) < expected {
        problems.push(Problem {
            object: layout::SNAPSHOTS.into(),
            error: format!(
                "the newest trusted snapshot is {}, but snapshot {expected} was written or seen before: snapshots have vanished from the store (deleted, hidden or rolled back)",
                report.newest.map_or("none".into(), |n| n.to_string())
            ),
        });
    }
    let placed = Placed::of(&source, &snaps, &mut report, &mut problems)?;
    check_collections(&source, &mut report, &mut problems)?;
    let existing: BTreeSet<SegmentId> = source
        .list(layout::SEGMENTS)
        .map_err(|e| restore_error("cannot list the segments", e))?
        .iter()
        .filter_map(|k| layout::parse_segment(k))
        .collect();
    for s in &existing {
        if let Ok(n) = source.size(&layout::segment(s)) {
            report.segment_bytes += n;
        }
    }
    // A first run that did not finish leaves segments and no snapshot; the
    // agent's index, which records each snapshot its agent commits, then
    // says that none was ever committed (as it says which one is newest).
    let never_committed = t.index_read && expected == 0;
    if snaps.is_empty() && !existing.is_empty() && !never_committed {
        problems.push(Problem {
            object: layout::SNAPSHOTS.into(),
            error: format!(
                "the store holds {} segments and no snapshot a trusted writer signed: every manifest is gone, or none was ever trusted",
                existing.len()
            ),
        });
    }
    report.unreferenced_segments = existing
        .iter()
        .filter(|s| !placed.referenced.contains_key(s))
        .count() as u64;
    for (segment, members) in &placed.referenced {
        report.members += members.len() as u64;
        check_segment(
            &source,
            &t.keyset,
            segment,
            members,
            &mut report,
            &mut problems,
        );
    }
    placed.check_relocated(&source, &mut problems);
    report.reclaimable_bytes = report.segment_bytes.saturating_sub(report.live_bytes);
    if req.read_data {
        let seed = seed.as_ref().expect("checked above");
        read_data(&source, &t.keyset, seed, &snaps, &mut report, &mut problems)?;
    } else {
        report.not_proven.push(
            "that the lockboxes' sealed group keys and the members' encrypted contents decrypt: a keyless check proves their structure and hashes only (run with --read-data --identity KEY)".into(),
        );
    }
    if expected == 0 && !t.index_read {
        report.not_proven.push(format!(
            "that no snapshot newer than {} was hidden: neither an agent index nor trust records say which is newest (give --index)",
            report.newest.map_or("the newest found".into(), |n| n.to_string())
        ));
    }
    problems.sort_by(|a, b| (&a.object, &a.error).cmp(&(&b.object, &b.error)));
    problems.dedup_by(|a, b| a.object == b.object && a.error == b.error);
    report.problems = problems;
    Ok(report)
}

/// Where each member of the kept snapshots is: where its manifest says, or
/// where relocation records moved it.
struct Placed {
    /// By segment: its members the snapshots name, with their SHA-256.
    referenced: BTreeMap<SegmentId, BTreeMap<MemberId, [u8; 32]>>,
    /// Relocated members: where the record puts them, and which record.
    places: BTreeMap<(SegmentId, MemberId), (cbfs_format::SummaryEntry, String)>,
}

impl Placed {
    fn of(
        source: &StoreSource,
        snaps: &[cbfs_restore::Snapshot],
        report: &mut VerifyReport,
        problems: &mut Vec<Problem>,
    ) -> Result<Placed> {
        let relocations = Relocations::load(source)
            .map_err(|e| restore_error("cannot list the relocation records", e))?;
        let mut referenced: BTreeMap<SegmentId, BTreeMap<MemberId, [u8; 32]>> = BTreeMap::new();
        let mut relocated: BTreeSet<(SegmentId, MemberId)> = BTreeSet::new();
        let mut places = BTreeMap::new();
        for s in snaps {
            for e in s.manifest().entries() {
                let moved = if relocations.moves_out_of(&e.segment) {
                    relocations.locate(source, e)
                } else {
                    None
                };
                if let Some(moved) = moved {
                    let at = moved.segment;
                    relocated.insert((e.segment, e.member));
                    let via = moved.via.last().cloned().unwrap_or_default();
                    places.insert((at, e.member), (moved.entry, via));
                    referenced.entry(at).or_default().insert(e.member, e.sha256);
                } else {
                    referenced
                        .entry(e.segment)
                        .or_default()
                        .insert(e.member, e.sha256);
                }
            }
        }
        report.relocated_members = relocated.len() as u64;
        for (object, error) in relocations.problems() {
            problems.push(Problem {
                object,
                error: format!("relocation record not used: {error}"),
            });
        }
        Ok(Placed { referenced, places })
    }

    /// A relocation record must put each member where the new segment's
    /// summary has it.
    fn check_relocated(&self, source: &StoreSource, problems: &mut Vec<Problem>) {
        let mut summaries: BTreeMap<SegmentId, Option<Summary>> = BTreeMap::new();
        for ((at, member), (place, via)) in &self.places {
            let summary = summaries.entry(*at).or_insert_with(|| {
                source
                    .get(&layout::summary(at))
                    .ok()
                    .and_then(|b| Summary::from_bytes(&b).ok())
            });
            if let Some(s) = summary
                && s.entry(member) != Some(place)
            {
                problems.push(Problem {
                    object: via.clone(),
                    error: format!(
                        "it moves member {member} to a place in segment {at} where the segment's summary does not have it"
                    ),
                });
            }
        }
    }
}

/// The collector's pending collection records: listed, and each one read.
fn check_collections(
    source: &StoreSource,
    report: &mut VerifyReport,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    for key in source
        .list(layout::COLLECTIONS)
        .map_err(|e| restore_error("cannot list the collection records", e))?
    {
        match source
            .get(&key)
            .map_err(|e| e.to_string())
            .and_then(|b| Collection::from_bytes(&b).map_err(|e| e.to_string()))
        {
            Ok(_) => report.pending_collections.push(key),
            Err(e) => problems.push(Problem {
                object: key,
                error: format!("not a collection record: {e}"),
            }),
        }
    }
    Ok(())
}

/// `--read-data`: every kept snapshot decrypted and checked, to nowhere.
fn read_data(
    source: &StoreSource,
    keyset: &cbfs_core::Keyset,
    seed: &Seed,
    snaps: &[cbfs_restore::Snapshot],
    report: &mut VerifyReport,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let opener = identify(copy(seed), keyset).ok_or_else(|| {
        Error::Usage(
            "--read-data needs the root secret or a scope secret of this file system".into(),
        )
    })?;
    for s in snaps {
        let r = cbfs_restore::restore(
            source,
            s,
            &opener,
            &RestoreOptions::default(),
            &mut DiscardSink,
        )
        .map_err(|e| restore_error(s.key(), e))?;
        report.decrypted += r.restored_entries;
        for f in r.failures {
            problems.push(Problem {
                object: f.object.clone(),
                error: format!("member {}: {}", f.member.unwrap_or_default(), f.error),
            });
        }
    }
    Ok(())
}

fn check_segment(
    source: &StoreSource,
    keyset: &cbfs_core::Keyset,
    segment: &SegmentId,
    members: &BTreeMap<MemberId, [u8; 32]>,
    report: &mut VerifyReport,
    problems: &mut Vec<Problem>,
) {
    let problem = |object: &str, error: String| Problem {
        object: object.to_owned(),
        error,
    };
    let skey = layout::summary(segment);
    let summary = match source
        .get(&skey)
        .map_err(|e| e.to_string())
        .and_then(|b| Summary::from_bytes(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            problems.push(problem(&skey, e));
            return;
        }
    };
    for (member, sha) in members {
        match summary.entry(member) {
            Some(e) if &e.sha256 == sha => {
                report.live_bytes += e.end_offset() - e.header_offset;
            }
            Some(_) => problems.push(problem(
                &skey,
                format!("member {member}: its hash differs from the manifest's"),
            )),
            None => problems.push(problem(
                &skey,
                format!("member {member} of a snapshot is not in the summary"),
            )),
        }
    }
    let seg_key = layout::segment(segment);
    match source.open(&seg_key) {
        Ok(reader) => {
            report.segments += 1;
            if let Err(e) = summary.verify_segment(reader) {
                problems.push(problem(&seg_key, e.to_string()));
            }
        }
        Err(e) => problems.push(problem(&seg_key, e.to_string())),
    }
    // Each group needs a lockbox; a rotation leaves one per key version.
    let mut found: BTreeMap<cbfs_format::GroupId, Vec<(u32, String)>> = BTreeMap::new();
    let prefix = layout::lockboxes_of(segment);
    match source.list(&prefix) {
        Ok(keys) => {
            for key in keys {
                let name = key.rsplit('/').next().unwrap_or_default();
                match layout::parse_lockbox_name(name) {
                    Some((group, version)) => found.entry(group).or_default().push((version, key)),
                    None => problems.push(problem(&key, "not a lockbox name".into())),
                }
            }
        }
        Err(e) => problems.push(problem(&prefix, e.to_string())),
    }
    for group in summary.groups() {
        let Some(versions) = found.get(&group) else {
            let lkey = layout::lockbox(segment, &group);
            problems.push(problem(
                &lkey,
                "missing: no lockbox of any key version".into(),
            ));
            continue;
        };
        for (version, lkey) in versions {
            match source
                .get(lkey)
                .map_err(|e| e.to_string())
                .and_then(|b| Lockbox::from_bytes(&b).map_err(|e| e.to_string()))
            {
                // A compacted segment holds copies of the lockboxes of the
                // segments its members came from: they name the segment
                // their group was made for (the binding their seal checks),
                // so only the group and the key version must match.
                Ok(lb) if lb.group_id() != group || lb.key_version() != *version => {
                    problems.push(problem(
                        lkey,
                        "the lockbox names another group or key version".into(),
                    ))
                }
                Ok(lb) => {
                    let known = cbfs_core::ScopeLabel::new(lb.scope())
                        .ok()
                        .is_some_and(|l| keyset.scope_key(&l, lb.key_version()).is_some());
                    if known {
                        report.lockboxes += 1;
                    } else {
                        problems.push(problem(
                            lkey,
                            format!(
                                "the lockbox is sealed for scope `{}` key version {}, which the keyset does not hold",
                                lb.scope(),
                                lb.key_version()
                            ),
                        ));
                    }
                }
                Err(e) => problems.push(problem(lkey, e)),
            }
        }
    }
}

/// A sink that keeps nothing: `verify --read-data` decrypts and checks only.
struct DiscardSink;

impl Sink for DiscardSink {
    fn begin_file(&mut self, _: &Metadata) -> cbfs_restore::Result<()> {
        Ok(())
    }
    fn write_content(&mut self, _: &[u8]) -> cbfs_restore::Result<()> {
        Ok(())
    }
    fn commit_file(&mut self) -> cbfs_restore::Result<()> {
        Ok(())
    }
    fn abort_file(&mut self) {}
    fn add_entry(&mut self, _: &Metadata) -> cbfs_restore::Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> cbfs_restore::Result<()> {
        Ok(())
    }
}
