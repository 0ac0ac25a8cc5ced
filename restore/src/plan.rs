//! Pass 1: per segment, open the lockboxes this identity can and read each
//! member's metadata; record what cannot be read, naming the object.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, SeekFrom};
use std::sync::Arc;

use cbfs_format::{
    GroupId, Lockbox, ManifestEntry, MemberId, Metadata, PEEK_LEN, SegmentId, SegmentMode,
    SegmentReader, Slots, Summary, SummaryEntry, layout,
};
use sha2::{Digest, Sha256};

use crate::engine::{Engine, Location, peek_meta};

/// Members a pass-1 thread reads at least (fewer are read on one thread).
const PEEK_SHARE_MIN: usize = 64;
use crate::error::Error;
use crate::report::Failure;
use crate::source::{ObjectSource, Overlay, ReadSeek};

/// What became of one group's lockbox.
enum GroupState {
    Open,
    NoAccess(String),
    Failed(Failure),
}

/// The lockboxes of one segment.
pub(crate) struct Lockboxes {
    states: HashMap<GroupId, GroupState>,
    listing: Option<Failure>,
    segment: SegmentId,
}

/// A member the summary (or a relocation record) places: its manifest
/// entry, its place, and the record that moved it there, if one did.
type Located = (ManifestEntry, SummaryEntry, Option<Arc<str>>);

/// The outcome of looking up a member's group.
enum Access {
    Open,
    Skip(String),
    Fail(Failure),
}

impl Lockboxes {
    fn access(&self, group: &GroupId) -> Access {
        match self.states.get(group) {
            Some(GroupState::Open) => Access::Open,
            Some(GroupState::NoAccess(scope)) => Access::Skip(scope.clone()),
            Some(GroupState::Failed(f)) => Access::Fail(f.clone()),
            None => Access::Fail(self.listing.clone().unwrap_or_else(|| {
                let key = layout::lockbox(&self.segment, group);
                Failure::new(key.clone(), None, &Error::Missing { key })
            })),
        }
    }
}

impl Engine<'_> {
    /// Loads and opens the lockboxes of `segment` (those of `needed` groups
    /// only, when given).
    pub(crate) fn lockboxes(
        &mut self,
        segment: SegmentId,
        needed: Option<&BTreeSet<GroupId>>,
    ) -> Lockboxes {
        let mut out = Lockboxes {
            states: HashMap::new(),
            listing: None,
            segment,
        };
        let prefix = layout::lockboxes_of(&segment);
        let keys = match self.source.list(&prefix) {
            Ok(k) => k,
            Err(e) => {
                out.listing = Some(Failure::new(prefix, None, &e));
                return out;
            }
        };
        // A group may have a lockbox per scope key version (a rotation
        // writes the new one beside the old): the newest that opens counts.
        let mut candidates: HashMap<GroupId, Vec<(u32, String, Lockbox)>> = HashMap::new();
        for key in keys {
            let name = key.rsplit('/').next().unwrap_or_default();
            let Some((group, version)) = layout::parse_lockbox_name(name) else {
                self.report
                    .warnings
                    .push(format!("ignoring {key}: not a lockbox name"));
                continue;
            };
            if needed.is_some_and(|n| !n.contains(&group)) {
                continue;
            }
            let parsed = self.source.get(&key).and_then(|bytes| {
                let lb = Lockbox::from_bytes(&bytes).map_err(|e| Error::format(key.clone(), e))?;
                if lb.group_id() != group || lb.key_version() != version {
                    return Err(Error::format(
                        key.clone(),
                        cbfs_format::Error::Malformed {
                            object: cbfs_format::ObjectKind::Lockbox,
                            offset: 0,
                            reason: format!(
                                "it holds the key of group {} under key version {}, not {group} under version {version}",
                                lb.group_id(),
                                lb.key_version()
                            ),
                        },
                    ));
                }
                Ok(lb)
            });
            match parsed {
                Ok(lb) => candidates
                    .entry(group)
                    .or_default()
                    .push((version, key, lb)),
                Err(e) => {
                    // A damaged lockbox counts only if no other version opens.
                    out.states
                        .entry(group)
                        .or_insert(GroupState::Failed(Failure::new(key, None, &e)));
                }
            }
        }
        for list in candidates.values_mut() {
            list.sort_by_key(|c| std::cmp::Reverse(c.0));
        }
        // Round by round: each group's newest untried lockbox, in one batch.
        let mut round = 0;
        loop {
            let batch: Vec<(GroupId, &String, &Lockbox)> = candidates
                .iter()
                .filter(|(g, _)| !matches!(out.states.get(*g), Some(GroupState::Open)))
                .filter_map(|(g, list)| list.get(round).map(|(_, k, lb)| (*g, k, lb)))
                .collect();
            if batch.is_empty() {
                break;
            }
            let refs: Vec<&Lockbox> = batch.iter().map(|(_, _, lb)| *lb).collect();
            let results = self.opener.open_batch(&refs);
            for ((group, key, lb), result) in batch.into_iter().zip(results) {
                let state = match result {
                    Ok(Some(k)) if k.id() == group => {
                        self.keys.insert(k);
                        GroupState::Open
                    }
                    Ok(Some(_)) => GroupState::Failed(Failure::new(
                        key.clone(),
                        None,
                        &Error::Usage("the opener returned the key of another group".into()),
                    )),
                    Ok(None) => GroupState::NoAccess(lb.scope().to_owned()),
                    Err(e) => GroupState::Failed(Failure::new(key.clone(), None, &e)),
                };
                // The newest version's outcome stands unless an older one opens.
                if round == 0 || matches!(state, GroupState::Open) {
                    out.states.insert(group, state);
                }
            }
            round += 1;
        }
        out
    }

    /// Records the files of a member whose metadata pass 1 read: those in
    /// `slots` (every one when `None`, for a segment read without a
    /// manifest). A slot the member does not have fails, naming it.
    fn found_slots(&mut self, table: &[Metadata], loc: Location, slots: Option<Slots>) {
        let wanted: Vec<usize> = match slots {
            Some(s) => s.iter().collect(),
            None => (0..table.len()).collect(),
        };
        for slot in wanted {
            match table.get(slot) {
                Some(meta) => self.found(meta, loc.clone(), slot),
                None => {
                    let e = Error::format(
                        loc.object.clone(),
                        cbfs_format::Error::Tar {
                            segment: Some(loc.segment),
                            offset: loc.header_offset,
                            reason: format!(
                                "the snapshot names file {slot} of member {}, which holds {} file(s)",
                                loc.member_text().unwrap_or_default(),
                                table.len()
                            ),
                        },
                    );
                    self.report.fail(loc.failure(&e));
                }
            }
        }
    }

    fn fail_all<'e>(
        &mut self,
        object: &str,
        members: impl IntoIterator<Item = &'e MemberId>,
        err: &Error,
    ) {
        for m in members {
            self.report
                .fail(Failure::new(object.to_owned(), Some(m.to_string()), err));
        }
    }

    /// Pass 1 over one segment of a snapshot: `entries` are the manifest's
    /// members in it, found through its summary; `relocated` are members
    /// the manifest names elsewhere and relocation records place here (at
    /// the place the records give, by the records named).
    pub(crate) fn plan_store_segment(
        &mut self,
        segment: SegmentId,
        entries: &[ManifestEntry],
        relocated: &[(ManifestEntry, SummaryEntry, String)],
    ) {
        let seg_key = layout::segment(&segment);
        let summary = self.summary_of(segment, entries.is_empty());
        let (mut reader, mode) = match open_segment(self.source, segment, &seg_key) {
            Ok(opened) => opened,
            Err(e) => {
                for (entry, _, via) in relocated {
                    let mut f = Failure::new(seg_key.clone(), Some(entry.member.to_string()), &e);
                    f.error.push_str(&format!(
                        "; the member was looked for where {via} says it was moved"
                    ));
                    self.report.fail(f);
                }
                let ids: Vec<MemberId> = entries.iter().map(|e| e.member).collect();
                return self.fail_all(&seg_key, &ids, &e);
            }
        };
        let (mut located, unlocated) = self.locate(segment, mode, summary.as_ref(), entries);
        located.extend(self.place_relocated(segment, &seg_key, mode, relocated));

        let needed: BTreeSet<GroupId> = located.iter().filter_map(|(_, s, _)| s.group).collect();
        let lockboxes = if mode == SegmentMode::Plain {
            Lockboxes {
                states: HashMap::new(),
                listing: None,
                segment,
            }
        } else {
            self.lockboxes(segment, unlocated.is_empty().then_some(&needed))
        };
        self.peek_located(&mut *reader, &seg_key, segment, mode, &located, &lockboxes);
        if !unlocated.is_empty() {
            self.plan_by_scan(
                &mut *reader,
                &seg_key,
                &seg_key,
                segment,
                mode,
                Some(&unlocated),
                &lockboxes,
            );
        }
    }

    /// The segment's summary, which says where each member is; `None` when
    /// there is nothing to look up, or when it is missing or damaged (that
    /// is reported, and worked around by scanning the segment: the manifest
    /// still proves the data).
    fn summary_of(&mut self, segment: SegmentId, nothing_named: bool) -> Option<Summary> {
        if nothing_named {
            return None;
        }
        let sum_key = layout::summary(&segment);
        let summary = self.source.get(&sum_key).and_then(|bytes| {
            let s = Summary::from_bytes(&bytes).map_err(|e| Error::format(sum_key.clone(), e))?;
            if s.segment_id() != segment {
                return Err(Error::format(
                    sum_key.clone(),
                    cbfs_format::Error::SummaryMismatch {
                        segment,
                        offset: 0,
                        reason: format!(
                            "the object holds the summary of segment {}",
                            s.segment_id()
                        ),
                    },
                ));
            }
            Ok(s)
        });
        match summary {
            Ok(s) => Some(s),
            Err(e) => {
                self.report.damaged(Failure::new(sum_key, None, &e));
                None
            }
        }
    }

    /// Splits the manifest's members of a segment into those its summary
    /// places (with the same SHA-256 as the manifest) and those it does not
    /// (damage reported; they are found by scanning).
    fn locate(
        &mut self,
        segment: SegmentId,
        mode: SegmentMode,
        summary: Option<&Summary>,
        entries: &[ManifestEntry],
    ) -> (Vec<Located>, Vec<ManifestEntry>) {
        let sum_key = layout::summary(&segment);
        let mut located = Vec::new();
        let mut unlocated = Vec::new();
        let mismatch = |reason: String| {
            Error::format(
                sum_key.clone(),
                cbfs_format::Error::SummaryMismatch {
                    segment,
                    offset: 0,
                    reason,
                },
            )
        };
        match summary {
            Some(s) if s.mode() != mode => {
                let e = mismatch("its mode (encrypted or plain) differs from the segment's".into());
                self.report.damaged(Failure::new(sum_key.clone(), None, &e));
                unlocated.extend_from_slice(entries);
            }
            Some(s) => {
                for e in entries {
                    match s.entry(&e.member) {
                        Some(se) if se.sha256 == e.sha256 => located.push((*e, se.clone(), None)),
                        other => {
                            let reason = if other.is_some() {
                                "its SHA-256 differs from the manifest's"
                            } else {
                                "it is not listed"
                            };
                            let err = mismatch(format!("member {}: {reason}", e.member));
                            self.report.damaged(Failure::new(
                                sum_key.clone(),
                                Some(e.member.to_string()),
                                &err,
                            ));
                            unlocated.push(*e);
                        }
                    }
                }
            }
            None => unlocated.extend_from_slice(entries),
        }
        (located, unlocated)
    }

    /// The members relocation records place in this segment, each named by
    /// the record that moved it; one placed in a segment of the other mode
    /// fails, naming the record.
    fn place_relocated(
        &mut self,
        segment: SegmentId,
        seg_key: &str,
        mode: SegmentMode,
        relocated: &[(ManifestEntry, SummaryEntry, String)],
    ) -> Vec<Located> {
        let mut placed = Vec::new();
        for (e, place, via) in relocated {
            let place_mode = place
                .group
                .map_or(SegmentMode::Plain, |_| SegmentMode::Encrypted);
            if mode != place_mode {
                let err = Error::format(
                    seg_key.to_owned(),
                    cbfs_format::Error::SummaryMismatch {
                        segment,
                        offset: place.header_offset,
                        reason: format!(
                            "member {}: {via} moves it into a segment of the other mode",
                            e.member
                        ),
                    },
                );
                self.report
                    .fail(Failure::new(via.clone(), Some(e.member.to_string()), &err));
                continue;
            }
            placed.push((*e, place.clone(), Some(Arc::from(via.as_str()))));
        }
        placed
    }

    /// Reads the metadata of the located members whose group this identity
    /// opens (the others are skipped or fail, naming their lockbox). A
    /// member whose metadata cannot be read fails; its report says whether
    /// its bytes differ from the manifest's SHA-256 too.
    fn peek_located(
        &mut self,
        reader: &mut (dyn ReadSeek + '_),
        seg_key: &str,
        segment: SegmentId,
        mode: SegmentMode,
        located: &[Located],
        lockboxes: &Lockboxes,
    ) {
        let mut to_peek = Vec::with_capacity(located.len());
        for (entry, se, via) in located {
            let loc = Location {
                key: seg_key.to_owned(),
                object: seg_key.to_owned(),
                segment,
                member: Some(entry.member),
                mode,
                header_offset: se.header_offset,
                data_offset: se.data_offset,
                data_len: se.data_len,
                sha256: Some(entry.sha256),
                via: via.clone(),
            };
            if let (SegmentMode::Encrypted, Some(group)) = (mode, se.group) {
                match lockboxes.access(&group) {
                    Access::Open => {}
                    Access::Skip(scope) => {
                        self.report.skip_scope(&scope);
                        continue;
                    }
                    Access::Fail(f) => {
                        self.report.fail(Failure {
                            member: loc.member_text(),
                            ..f
                        });
                        continue;
                    }
                }
            }
            to_peek.push((loc, entry.slots));
        }
        // In the segment's order: a reader then reads forward (over a
        // network, a few long requests instead of one per member).
        to_peek.sort_by_key(|(loc, _)| loc.header_offset);
        let peeked = self.peek_all(reader, &to_peek);
        for ((loc, slots), result) in to_peek.into_iter().zip(peeked) {
            match result {
                Ok(table) => self.found_slots(&table, loc, Some(slots)),
                Err(e) => {
                    let mut failure = loc.failure(&Error::format(seg_key.to_owned(), e));
                    if hash_differs(reader, &loc) {
                        failure.error.push_str(
                            "; its bytes also differ from the SHA-256 in the manifest \
                             (altered in the store, or a member swapped in from another segment)",
                        );
                    }
                    self.report.fail(failure);
                }
            }
        }
    }

    /// The heads of the encrypted members among `locs` (what
    /// [`peek_meta`] reads first), by offset, read together in a few
    /// requests where the source can (a gateway: one request instead of
    /// reading the whole segment through); empty where it cannot, or if
    /// that failed (the members are then read as usual, and a failure is
    /// reported there).
    fn read_heads(&self, locs: &[(Location, Slots)]) -> BTreeMap<u64, Vec<u8>> {
        let ranges: Vec<std::ops::Range<u64>> = locs
            .iter()
            .filter(|(l, _)| {
                l.mode == SegmentMode::Encrypted && l.member.is_some() && l.data_len > 0
            })
            .map(|(l, _)| l.data_offset..l.data_offset + l.data_len.min(PEEK_LEN as u64))
            .collect();
        let Some((first, _)) = locs.first() else {
            return BTreeMap::new();
        };
        if ranges.is_empty() {
            return BTreeMap::new();
        }
        match self.source.get_ranges(&first.key, &ranges) {
            Ok(Some(heads)) => ranges.iter().map(|r| r.start).zip(heads).collect(),
            Ok(None) => BTreeMap::new(),
            Err(e) => {
                tracing::debug!(key = %first.key, "the heads were not read together: {e}");
                BTreeMap::new()
            }
        }
    }

    /// Reads the metadata of members of one segment, in the order given.
    /// With more than one thread, each thread reads a contiguous share of
    /// them through its own reader (so each still reads forward).
    fn peek_all(
        &self,
        reader: &mut (dyn ReadSeek + '_),
        locs: &[(Location, Slots)],
    ) -> Vec<Result<Vec<Metadata>, cbfs_format::Error>> {
        let heads = self.read_heads(locs);
        let threads = self.threads.min(locs.len() / PEEK_SHARE_MIN).max(1);
        if threads == 1 {
            let mut reader = Overlay::new(reader, &heads);
            return locs
                .iter()
                .map(|(loc, _)| peek_meta(&mut reader, loc, &self.keys))
                .collect();
        }
        let share = locs.len().div_ceil(threads);
        let (source, keys, heads) = (self.source, &self.keys, &heads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = locs
                .chunks(share)
                .map(|part| {
                    scope.spawn(move || -> Vec<Result<Vec<Metadata>, cbfs_format::Error>> {
                        match source.open(&part[0].0.key) {
                            Ok(mut r) => {
                                let mut r = Overlay::new(&mut *r, heads);
                                part.iter()
                                    .map(|(loc, _)| peek_meta(&mut r, loc, keys))
                                    .collect()
                            }
                            Err(e) => part
                                .iter()
                                .map(|_| {
                                    Err(cbfs_format::Error::InvalidInput {
                                        reason: format!("cannot open the segment again: {e}"),
                                    })
                                })
                                .collect(),
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("a metadata reader panicked"))
                .collect()
        })
    }

    /// Pass 1 by reading a segment from its start: for loose segment files,
    /// and for members a damaged summary cannot locate. With `wanted`, only
    /// those members are planned (and any not found fails); without, every
    /// member is.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn plan_by_scan(
        &mut self,
        reader: &mut (dyn ReadSeek + '_),
        key: &str,
        object: &str,
        segment: SegmentId,
        mode: SegmentMode,
        wanted: Option<&[ManifestEntry]>,
        lockboxes: &Lockboxes,
    ) {
        let mut scan = Scan::new(object, segment, wanted);
        if let Err(e) = reader.seek(SeekFrom::Start(0)) {
            return scan.fail_rest(self, &Error::read(object.to_owned(), e));
        }
        let mut sr = match SegmentReader::new(&mut *reader) {
            Ok(r) => r,
            Err(e) => return scan.fail_rest(self, &Error::format(object.to_owned(), e)),
        };
        loop {
            let member = match sr.next_member() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    scan.fail_rest(self, &Error::format(object.to_owned(), e));
                    break;
                }
            };
            let info = member.info().clone();
            let loc = Location {
                key: key.to_owned(),
                object: object.to_owned(),
                segment,
                member: info.member,
                mode,
                header_offset: info.header_offset,
                data_offset: info.data_offset,
                data_len: info.data_len,
                sha256: None,
                via: None,
            };
            let read = match mode {
                SegmentMode::Encrypted => {
                    self.scan_encrypted(&mut scan, member, loc, lockboxes);
                    Ok(())
                }
                SegmentMode::Plain => self.scan_plain(&mut scan, member, loc),
            };
            if let Err(e) = read {
                scan.fail_rest(self, &e);
                break;
            }
        }
        scan.missing(self);
    }

    /// One member of an encrypted segment found by a scan: its files
    /// planned, or why not.
    fn scan_encrypted<R: std::io::Read + Send>(
        &mut self,
        scan: &mut Scan<'_>,
        member: cbfs_format::SegmentMember<'_, R>,
        mut loc: Location,
        lockboxes: &Lockboxes,
    ) {
        let id = loc.member.expect("encrypted members have ids");
        let mut slots = None;
        if scan.wanted {
            let Some((sha, live)) = scan.by_id.remove(&id) else {
                return;
            };
            loc.sha256 = Some(sha);
            slots = Some(live);
        }
        let object = scan.object;
        match member.open_files(&self.keys) {
            Ok(files) => self.found_slots(&files.entries, loc, slots),
            Err(
                e @ cbfs_format::Error::WrongKey {
                    group: Some(group), ..
                },
            ) if self.keys.get(&group).is_none() => match lockboxes.access(&group) {
                Access::Skip(scope) => self.report.skip_scope(&scope),
                Access::Fail(f) => self.report.fail(Failure {
                    member: loc.member_text(),
                    ..f
                }),
                Access::Open => self
                    .report
                    .fail(loc.failure(&Error::format(object.to_owned(), e))),
            },
            Err(e) => self
                .report
                .fail(loc.failure(&Error::format(object.to_owned(), e))),
        }
    }

    /// One member of a plain segment found by a scan: hashed (a plain
    /// member has no id: the manifest's SHA-256 names it) and planned. An
    /// error reading it ends the scan.
    fn scan_plain<R: std::io::Read>(
        &mut self,
        scan: &mut Scan<'_>,
        member: cbfs_format::SegmentMember<'_, R>,
        mut loc: Location,
    ) -> Result<(), Error> {
        let meta = member
            .plain_metadata()
            .cloned()
            .expect("plain members carry metadata");
        let mut hasher = Sha256::new();
        let mut raw = member.raw();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match raw.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) => {
                    return Err(Error::format(
                        scan.object.to_owned(),
                        cbfs_format::Error::from_io(e, "reading a segment"),
                    ));
                }
            }
        }
        let sha: [u8; 32] = hasher.finalize().into();
        if scan.wanted {
            let Some(id) = scan.by_hash.get_mut(&sha).and_then(Vec::pop) else {
                return Ok(());
            };
            scan.by_id.remove(&id);
            loc.member = Some(id);
            loc.sha256 = Some(sha);
        }
        self.found(&meta, loc, 0);
        Ok(())
    }
}

/// What a scan of one segment still looks for.
struct Scan<'a> {
    object: &'a str,
    segment: SegmentId,
    /// Only the members of the snapshot are wanted (else every one is).
    wanted: bool,
    /// The wanted members not found yet: their SHA-256 and live slots.
    by_id: HashMap<MemberId, ([u8; 32], Slots)>,
    /// The same by SHA-256 (plain members have no id).
    by_hash: HashMap<[u8; 32], Vec<MemberId>>,
}

impl<'a> Scan<'a> {
    fn new(object: &'a str, segment: SegmentId, wanted: Option<&[ManifestEntry]>) -> Self {
        let mut by_id = HashMap::new();
        let mut by_hash: HashMap<[u8; 32], Vec<MemberId>> = HashMap::new();
        for e in wanted.unwrap_or_default() {
            by_id.insert(e.member, (e.sha256, e.slots));
            by_hash.entry(e.sha256).or_default().push(e.member);
        }
        Scan {
            object,
            segment,
            wanted: wanted.is_some(),
            by_id,
            by_hash,
        }
    }

    /// The scan cannot go on: every wanted member not found yet fails with
    /// `err` (or the segment does, when every member was wanted).
    fn fail_rest(&mut self, engine: &mut Engine<'_>, err: &Error) {
        if self.wanted {
            let mut left: Vec<&MemberId> = self.by_id.keys().collect();
            left.sort();
            engine.fail_all(self.object, left, err);
        } else {
            engine
                .report
                .fail(Failure::new(self.object.to_owned(), None, err));
        }
        self.by_id.clear();
    }

    /// At the end of the segment: each wanted member not in it fails.
    fn missing(self, engine: &mut Engine<'_>) {
        let mut left: Vec<MemberId> = self.by_id.into_keys().collect();
        left.sort();
        for id in left {
            let e = Error::format(
                self.object.to_owned(),
                cbfs_format::Error::Tar {
                    segment: Some(self.segment),
                    offset: 0,
                    reason: format!("member {id} of the snapshot is not in the segment"),
                },
            );
            engine.report.fail(Failure::new(
                self.object.to_owned(),
                Some(id.to_string()),
                &e,
            ));
        }
    }
}

/// Whether a member's data bytes differ from the manifest's SHA-256 (a
/// short read counts as differing). For the message of a member that failed.
/// Opens the segment and checks that it is the one its name says.
fn open_segment<'a>(
    source: &'a dyn ObjectSource,
    segment: SegmentId,
    seg_key: &str,
) -> Result<(Box<dyn ReadSeek + 'a>, SegmentMode), Error> {
    let mut reader = source.open(seg_key)?;
    let (found_id, mode) = match SegmentReader::new(&mut reader) {
        Ok(r) => (r.segment_id(), r.mode()),
        Err(e) => return Err(Error::format(seg_key.to_owned(), e)),
    };
    if found_id != segment {
        let e = cbfs_format::Error::Tar {
            segment: Some(found_id),
            offset: 0,
            reason: format!(
                "the object holds segment {found_id}, not {segment} (objects swapped?)"
            ),
        };
        return Err(Error::format(seg_key.to_owned(), e));
    }
    Ok((reader, mode))
}

fn hash_differs(reader: &mut (dyn ReadSeek + '_), loc: &Location) -> bool {
    let Some(want) = loc.sha256 else {
        return false;
    };
    if reader.seek(SeekFrom::Start(loc.data_offset)).is_err() {
        return true;
    }
    let mut hasher = Sha256::new();
    let copied = std::io::copy(&mut reader.take(loc.data_len), &mut HashSink(&mut hasher));
    !matches!(copied, Ok(n) if n == loc.data_len) || <[u8; 32]>::from(hasher.finalize()) != want
}

struct HashSink<'a>(&'a mut Sha256);

impl std::io::Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
