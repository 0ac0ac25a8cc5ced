//! `cbfs-tier rekey`: the members of one scope stored again under fresh
//! file and group keys, after a revocation that matters.
//!
//! ```text
//! index: files of scope S ─▶ batches ─▶ restore engine (admin key, checked
//!        against the signed manifest) ─▶ chunk spool + plaintext hashes
//!      ─▶ workers (as a tier-out: new segments, new lockboxes)
//!      ─▶ signed snapshot ─▶ every re-keyed file read back and compared
//! ```
//!
//! Content comes from the store, never from the tree (a file may be
//! released, or changed since). Each file's old member and the hashes of
//! its plaintext and metadata are noted in the index before its new copy
//! is committed; a marker in the index state says a re-key is under way.
//! A rerun after a crash finds a file re-keyed when its record no longer
//! names the noted member, and carries on; tier-out runs wait for it.
//! Memory stays bounded: the files are read a batch at a time into a spool
//! on disk, which is deleted once its files are stored.

mod read;
mod stubs;
mod verify;

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Instant;

use cbfs_core::{KeySource, ScopeLabel, Unlock, fingerprint};
use cbfs_format::{MemberId, Metadata};
use cbfs_restore::{
    AdminOpener, Failure, Identity, MemberFile, Snapshot, Trust, identify, open_snapshot,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::agent::Agent;
use crate::error::{Error, Result, restore_error};
use crate::forget::{ForgetReport, ForgetRequest, ForgetSigner};
use crate::index::{Batch, FileRecord, Index, RekeyMarker};
use crate::observe::Observer;

use super::diff::Dispatch;
use super::queue::{CloseOnDrop, WorkQueue};
use super::{Input, OutOptions, OutReport, Shared};
use read::Reader;

/// A batch read back from the store at once holds at most this many
/// files, or this much content (one file may exceed it).
const BATCH_FILES: usize = 4096;
const BATCH_BYTES: u64 = 64 << 20;
/// Frames read back and waiting for a worker, at most (a re-key seals a
/// member's compressed frame again as it is; see `read.rs`).
const FRAME_BUDGET: u64 = 64 << 20;

/// What `cbfs-tier rekey` is asked to do.
#[derive(Clone, Debug)]
pub struct RekeyRequest {
    /// The scope to re-key.
    pub scope: String,
    /// The administrator's root secret.
    pub admin: KeySource,
    /// Re-key only members first stored in this snapshot (id, 8+
    /// characters of it, or sequence) or later.
    pub since: Option<String>,
    /// After verification, publish a retention record, signed by the
    /// administrator, that forgets the older snapshots naming old members.
    pub forget_older: bool,
    /// The store spec (for the retention record).
    pub store: String,
    /// The keyset file the agent was opened with.
    pub keyset: PathBuf,
    /// The tiered tree: the stub records of its released files of the
    /// scope are made to name the new members (else a recall, once the old
    /// snapshots are forgotten, finds no copy). Only the records change.
    pub tree: Option<PathBuf>,
}

/// What a re-key did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RekeyReport {
    /// The scope.
    pub scope: String,
    /// Entries stored again under new keys by this run.
    pub rekeyed: u64,
    /// Entries an earlier, interrupted run of this re-key had done.
    pub already: u64,
    /// Entries left as they are by `--since` (stored before it).
    pub before_since: u64,
    /// Content bytes re-encrypted.
    pub bytes: u64,
    /// Bytes added to the store.
    pub bytes_stored: u64,
    /// Segments written.
    pub new_segments: u64,
    /// Members sealed again as they were (their compressed plaintext under
    /// a new file key and group key, not compressed a second time): those
    /// up to 4 MiB whose every file is re-keyed. The others are stored
    /// again file by file.
    pub resealed_members: u64,
    /// Entries read back from the new snapshot and found identical
    /// (content and metadata) to what they were.
    pub verified: u64,
    /// The snapshot that names the new members (`None` if the scope had
    /// nothing to re-key).
    pub snapshot: Option<String>,
    /// Its sequence.
    pub sequence: Option<u64>,
    /// Old members replaced (now garbage once no kept snapshot names them).
    pub old_members: u64,
    /// Kept snapshots older than the new one that still name old members:
    /// until they are forgotten, the old members stay in the store, under
    /// the old keys.
    pub older_snapshots: Vec<u64>,
    /// With `--forget-older`: the retention record that forgets them.
    pub forgotten: Option<ForgetReport>,
    /// With `--tree`: stubs of released files whose records now name the
    /// new members.
    pub stubs_updated: u64,
    /// Things to know (a stub that could not be updated, ...).
    pub warnings: Vec<String>,
    /// Members that could not be read back (damaged): they stay under their
    /// old keys. Non-empty means the command fails.
    pub failures: Vec<Failure>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// A re-key's fixed facts, shared by the run's threads.
pub(crate) struct Plan {
    scope: ScopeLabel,
    opener: AdminOpener,
    trust: Trust,
    /// With `--since`: the snapshot before it (its members are left).
    before: Option<Snapshot>,
    marker: RekeyMarker,
    /// The marker was in the index before this run: a rerun.
    resumed: bool,
    failures: Mutex<Vec<Failure>>,
    already: std::sync::atomic::AtomicU64,
    before_since: std::sync::atomic::AtomicU64,
    /// Frames read back and waiting to be sealed again.
    frames: std::sync::Arc<crate::out::FrameBudget>,
}

impl Plan {
    pub(crate) fn resumed(&self) -> bool {
        self.resumed
    }
}

/// What is noted of a re-keyed path (an index scratch row).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Note {
    old_segment: cbfs_format::SegmentId,
    old_member: MemberId,
    old_slot: u16,
    /// SHA-256 of the content.
    content: [u8; 32],
    /// SHA-256 of the metadata record.
    meta: [u8; 32],
}

impl Note {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(NOTE_LEN);
        v.extend_from_slice(self.old_segment.as_bytes());
        v.extend_from_slice(self.old_member.as_bytes());
        v.extend_from_slice(&self.old_slot.to_le_bytes());
        v.extend_from_slice(&self.content);
        v.extend_from_slice(&self.meta);
        v
    }

    fn decode(path: &[u8], b: &[u8]) -> Result<Note> {
        if b.len() != NOTE_LEN {
            return Err(Error::Index {
                path: PathBuf::from("(re-key notes)"),
                detail: format!(
                    "the note of {}: {} bytes, not {NOTE_LEN}",
                    String::from_utf8_lossy(path),
                    b.len()
                ),
            });
        }
        Ok(Note {
            old_segment: cbfs_format::SegmentId::from_bytes(b[..16].try_into().expect("16")),
            old_member: MemberId::from_bytes(b[16..32].try_into().expect("16")),
            old_slot: u16::from_le_bytes(b[32..34].try_into().expect("2")),
            content: b[34..66].try_into().expect("32"),
            meta: b[66..98].try_into().expect("32"),
        })
    }

    /// Whether `rec` no longer names the noted member: re-keyed.
    fn replaced_by(&self, rec: &FileRecord) -> bool {
        self.old_member != rec.member || self.old_slot != rec.slot
    }
}

/// segment, member, slot, two hashes.
const NOTE_LEN: usize = 16 + 16 + 2 + 32 + 32;

/// Notes a path a worker is about to store again from its old member
/// `(segment, member, slot)`, with its content and metadata hashes.
pub(crate) fn put_note(
    index: &Index,
    path: &[u8],
    (old_segment, old_member, old_slot): (cbfs_format::SegmentId, MemberId, u16),
    content: [u8; 32],
    meta: [u8; 32],
) -> Result<()> {
    let note = Note {
        old_segment,
        old_member,
        old_slot,
        content,
        meta,
    };
    index.rekey_put(path, &note.encode())
}

pub(crate) use read::frame_hashes;

fn meta_hash(meta: &Metadata) -> [u8; 32] {
    Sha256::digest(meta.to_record().unwrap_or_default()).into()
}

fn member_file(rec: &FileRecord) -> MemberFile {
    MemberFile {
        segment: rec.segment,
        member: rec.member,
        slot: rec.slot,
        sha256: rec.sha256,
    }
}

/// Re-keys one scope (see the module), from a thread that may block.
pub(crate) fn run(
    agent: &Agent,
    opts: &OutOptions,
    req: &RekeyRequest,
    rt: tokio::runtime::Handle,
    observer: &dyn Observer,
) -> Result<RekeyReport> {
    let started = Instant::now();
    let Some(keyset) = agent.keyset.clone() else {
        return Err(Error::Usage(
            "re-keying needs the public keyset: give --keyset KEYSET.json".into(),
        ));
    };
    // The key first: a wrong one writes nothing.
    let seed = req.admin.load(&Unlock::from_env())?;
    let opener = match identify(seed, &keyset) {
        Some(Identity::Admin(a)) => a,
        _ => {
            return Err(Error::Usage(format!(
                "{} is not the administrator's root secret of `{}` (its administrator key is {}): \
                 only the root secret re-keys a scope",
                req.admin,
                keyset.fs(),
                fingerprint(keyset.admin_verifying_key())
            )));
        }
    };
    let scope = ScopeLabel::new(req.scope.clone())
        .map_err(|e| Error::Usage(format!("--scope {}: {e}", req.scope)))?;
    if keyset.scope(&scope).is_none() {
        let known: Vec<&str> = keyset.scopes().keys().map(|l| l.as_str()).collect();
        return Err(Error::Usage(format!(
            "scope `{scope}` is not in the keyset of `{}` (its scopes: {})",
            keyset.fs(),
            known.join(", ")
        )));
    }
    let state = agent.index.state()?;
    if state.plain == Some(true) {
        return Err(Error::Usage(
            "this index writes plain tars: there are no keys to re-key".into(),
        ));
    }
    if state.last_snapshot.is_none() {
        return Err(Error::Usage(
            "this index has no snapshot yet: there is nothing to re-key".into(),
        ));
    }
    let trust = agent.trust()?;
    let source = agent.source(rt.clone());
    let (marker, resumed) = match state.rekey.clone() {
        Some(m) if m.scope != scope.as_str() => {
            return Err(Error::Usage(format!(
                "a re-key of scope `{}` is under way on this index (interrupted?): finish it first \
                 with cbfs-tier rekey --scope {}",
                m.scope, m.scope
            )));
        }
        Some(m) if req.since.is_some() && req.since != m.since => {
            return Err(Error::Usage(format!(
                "the re-key of `{scope}` under way began with --since {}: rerun it with the same",
                m.since.as_deref().unwrap_or("(none)")
            )));
        }
        Some(m) => (m, true),
        None => {
            let before = match &req.since {
                None => None,
                Some(sel) => {
                    let since = open_snapshot(&source, &trust, Some(sel))
                        .map_err(|e| restore_error(format!("--since {sel}"), e))?;
                    let (known, _) = cbfs_restore::snapshots(&source, &trust, 0)
                        .map_err(|e| restore_error("snapshots/", e))?;
                    known
                        .iter()
                        .filter(|s| s.sequence() < since.sequence())
                        .max_by_key(|s| s.sequence())
                        .map(|s| s.id().to_string())
                }
            };
            let marker = RekeyMarker {
                scope: scope.to_string(),
                since: req.since.clone(),
                before,
                started: cbfs_core::now().unix_timestamp(),
            };
            (marker, false)
        }
    };
    let before = match &marker.before {
        None => None,
        Some(id) => Some(
            open_snapshot(&source, &trust, Some(id))
                .map_err(|e| restore_error(format!("the snapshot before --since ({id})"), e))?,
        ),
    };
    let plan = Plan {
        scope,
        opener,
        trust,
        before,
        marker,
        resumed,
        failures: Mutex::new(Vec::new()),
        already: Default::default(),
        before_since: Default::default(),
        frames: std::sync::Arc::new(crate::out::FrameBudget::new(FRAME_BUDGET)),
    };
    let out: OutReport = super::run(agent, opts, Input::Rekey(&plan), rt.clone(), observer)?;
    tracing::info!(
        scope = %plan.scope,
        stored = out.files,
        "re-keyed entries stored; reading them back to verify"
    );
    let mut report = RekeyReport {
        scope: plan.scope.to_string(),
        rekeyed: out.files,
        already: plan.already.load(Ordering::Relaxed),
        before_since: plan.before_since.load(Ordering::Relaxed),
        bytes: out.bytes_read,
        bytes_stored: out.bytes_stored,
        new_segments: out.new_segments,
        resealed_members: plan.frames.resealed.load(Ordering::Relaxed),
        failures: {
            let mut f = std::mem::take(&mut *plan.failures.lock().expect("failures"));
            f.append(&mut plan.frames.failures.lock().expect("failures"));
            f
        },
        ..RekeyReport::default()
    };
    let state = agent.index.state()?;
    let newest = state
        .last_snapshot
        .clone()
        .ok_or_else(|| Error::Usage("no snapshot after the re-key".into()))?;
    if report.rekeyed + report.already > 0 {
        report.snapshot = Some(newest.id.to_string());
        report.sequence = Some(newest.sequence);
    }
    let snapshot = open_snapshot(&source, &plan.trust, Some(&newest.id.to_string()))
        .map_err(|e| restore_error("the re-keyed snapshot could not be verified", e))?;

    // Before anything old may go: every re-keyed entry, read back.
    let old = verify::verify(agent, &plan, &source, &snapshot, &mut report)?;
    tracing::info!(
        verified = report.verified,
        "every re-keyed entry reads back as it was"
    );
    report.old_members = old.len() as u64;
    match &req.tree {
        Some(root) => stubs::update_stubs(agent, root, &newest, &mut report)?,
        None if req.forget_older => report.warnings.push(
            "no --tree given: stubs of released files of the scope still name the old members; \
             recall them before the older snapshots are collected, or rerun with --tree"
                .into(),
        ),
        None => {}
    }
    let (listed, _) = cbfs_restore::snapshots(&source, &plan.trust, 0)
        .map_err(|e| restore_error("snapshots/", e))?;
    let mut keep = Vec::new();
    for s in &listed {
        let names_old = s.sequence() < newest.sequence
            && s.manifest()
                .entries()
                .iter()
                .any(|e| old.contains(&e.member));
        if names_old {
            report.older_snapshots.push(s.sequence());
        } else {
            keep.push(s.id().to_string());
        }
    }
    if req.forget_older && !report.older_snapshots.is_empty() {
        let forgotten = crate::forget::forget_blocking(
            &ForgetRequest {
                store: req.store.clone(),
                trust: crate::restore::TrustOptions {
                    keyset: Some(req.keyset.clone()),
                    ..Default::default()
                },
                signer: ForgetSigner::Admin(req.admin.clone()),
                policy: crate::policy::KeepPolicy {
                    snapshots: keep,
                    ..Default::default()
                },
                dry_run: false,
            },
            rt,
        )?;
        report.forgotten = Some(forgotten);
    }
    // Done: the notes and the marker go together.
    let mut state = agent.index.state()?;
    state.rekey = None;
    let mut batch = Batch::default();
    batch.put_state(&state);
    agent.index.rekey_clear(batch)?;
    report.seconds = started.elapsed().as_secs_f64();
    if let Some(first) = report.failures.first() {
        return Err(Error::Integrity {
            object: first.object.clone(),
            reason: format!(
                "{} entr{} of scope `{}` could not be read back and stay under their old keys \
                 (first: member {} {}: {}); the {} others are re-keyed in snapshot {}",
                report.failures.len(),
                if report.failures.len() == 1 {
                    "y"
                } else {
                    "ies"
                },
                report.scope,
                first.member.as_deref().unwrap_or("?"),
                first.path.as_deref().unwrap_or(""),
                first.error,
                report.rekeyed + report.already,
                newest.sequence
            ),
        });
    }
    Ok(report)
}

/// What a path of the scope is to this re-key.
enum Todo {
    Done,
    BeforeSince,
    Store,
}

fn todo(index: &Index, plan: &Plan, path: &[u8], rec: &FileRecord) -> Result<Todo> {
    if let Some(b) = index.rekey_get(path)?
        && Note::decode(path, &b)?.replaced_by(rec)
    {
        return Ok(Todo::Done);
    }
    if plan
        .before
        .as_ref()
        .is_some_and(|b| b.manifest().find(&rec.segment, &rec.member).is_some())
    {
        return Ok(Todo::BeforeSince);
    }
    Ok(Todo::Store)
}

/// The run's part (called by [`super::run_shared`]): reads every file of
/// the scope still to do back from the newest snapshot and hands it to
/// the workers.
pub(crate) fn store_rekey(shared: &Shared<'_>, plan: &Plan, report: &mut OutReport) -> Result<()> {
    let agent = shared.agent;
    let mut state = agent.index.state()?;
    if state.rekey.is_none() {
        state.rekey = Some(plan.marker.clone());
        let mut b = Batch::default();
        b.put_state(&state);
        agent.index.commit(b)?;
    }
    let newest = state
        .last_snapshot
        .clone()
        .ok_or_else(|| Error::Usage("this index has no snapshot yet".into()))?;
    let source = agent.source(shared.rt.clone());
    let snapshot = open_snapshot(&source, &plan.trust, Some(&newest.id.to_string()))
        .map_err(|e| restore_error("the snapshot to re-key could not be verified", e))?;
    let reader = Reader {
        shared,
        plan,
        source: &source,
        snapshot: &snapshot,
        spools: std::sync::atomic::AtomicU64::new(0),
    };
    let cancelled = || {
        shared
            .opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    };
    let queue = WorkQueue::default();
    let (read, stored) = std::thread::scope(|s| {
        let _closing = CloseOnDrop(shared, &queue);
        let mut dispatch = Dispatch::new(s, shared, &queue);
        let read = (|| -> Result<()> {
            let mut batch: Vec<(Vec<u8>, FileRecord)> = Vec::new();
            let mut batch_bytes = 0u64;
            let mut links: Vec<(Vec<u8>, FileRecord)> = Vec::new();
            agent.index.for_each_file(|path, rec| {
                if cancelled() {
                    shared.stop.store(true, Ordering::SeqCst);
                }
                if shared.stop.load(Ordering::SeqCst) {
                    return Err(stopped(cancelled()));
                }
                if rec.scope != plan.scope.as_str() {
                    return Ok(());
                }
                report.scanned += 1;
                match todo(&agent.index, plan, path, &rec)? {
                    Todo::Done => {
                        plan.already.fetch_add(1, Ordering::Relaxed);
                    }
                    Todo::BeforeSince => {
                        plan.before_since.fetch_add(1, Ordering::Relaxed);
                    }
                    Todo::Store if rec.hardlink_to.is_some() => links.push((path.to_vec(), rec)),
                    Todo::Store => {
                        batch_bytes += rec.stat.size;
                        batch.push((path.to_vec(), rec));
                        if batch.len() >= BATCH_FILES || batch_bytes >= BATCH_BYTES {
                            reader.read(std::mem::take(&mut batch), &[], &mut dispatch)?;
                            batch_bytes = 0;
                        }
                    }
                }
                Ok(())
            })?;
            reader.read(batch, &[], &mut dispatch)?;
            // Hard links last, each with what it links to (as it was:
            // its note names its old member, in the same snapshot).
            for chunk in links.chunks(BATCH_FILES / 2) {
                let mut targets = Vec::new();
                for (path, rec) in chunk {
                    let target = rec.hardlink_to.as_deref().expect("a link");
                    let Some(mut t) = agent.index.file(target)? else {
                        continue;
                    };
                    if let Some(b) = agent.index.rekey_get(target)? {
                        let note = Note::decode(target, &b)?;
                        if note.replaced_by(&t) {
                            // Re-keyed already: its old member is still in
                            // the snapshot read from.
                            let Some(old) = snapshot
                                .manifest()
                                .find(&note.old_segment, &note.old_member)
                            else {
                                tracing::warn!(
                                    path = %String::from_utf8_lossy(path),
                                    "the old copy of its target is not in the snapshot"
                                );
                                continue;
                            };
                            t = FileRecord {
                                segment: old.segment,
                                member: old.member,
                                sha256: old.sha256,
                                slot: note.old_slot,
                                ..t
                            };
                        }
                    }
                    targets.push((target.to_vec(), t));
                }
                reader.read(chunk.to_vec(), &targets, &mut dispatch)?;
            }
            Ok(())
        })();
        if read.is_err() {
            shared.stop.store(true, Ordering::SeqCst);
        }
        (read, dispatch.finish())
    });
    // A worker's failure is the cause; the reading then stopped.
    stored?;
    read?;
    // A re-keyed link's target is in the index as the same inode: nothing
    // for the end of the run to store again.
    shared.links.lock().expect("links lock").clear();
    Ok(())
}

fn stopped(cancelled: bool) -> Error {
    if cancelled {
        Error::Cancelled
    } else {
        Error::Usage("the run stopped early".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_round_trips_and_a_short_one_is_an_index_error() {
        let note = Note {
            old_segment: cbfs_format::SegmentId::random(),
            old_member: MemberId::random_with_rng(&mut rand::thread_rng()),
            old_slot: 7,
            content: [1; 32],
            meta: [2; 32],
        };
        let bytes = note.encode();
        assert_eq!(bytes.len(), NOTE_LEN);
        assert_eq!(Note::decode(b"a/b", &bytes).unwrap(), note);
        match Note::decode(b"a/b", &bytes[1..]) {
            Err(Error::Index { detail, .. }) => assert!(detail.contains("a/b"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }
}
