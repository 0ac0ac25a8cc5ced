//! Tiering proper: the states of files (new, archived, dirty, released,
//! lost; flags no-release and no-archive), releasing archived files'
//! local content, and recalling it.
//!
//! A released file is a *stub*: same inode, size, mode, owner and times,
//! its blocks freed, and a stub record in the extended attribute
//! `trusted.cbfs.stub` ([`cbfs_format::StubRecord`]) naming the member
//! that holds its content, so that it is recognisable without the index.
//! The index keeps each path's flags and losses ([`HsmRecord`]); whether a
//! file is released is read from the file itself and checked against the
//! index's record of it.
//!
//! Recalls happen in processes that do not hold the index (a fault-in
//! handler, `cbfs-tier recall`): they leave what they did in the recall
//! journal, which the next holder of the index takes in ([`absorb`]).

mod journal;
mod recall;
mod release;
mod state;
pub(crate) mod stub;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cbfs_core::{Keyset, public_key_from_hex};
use cbfs_restore::{Anchors, ObjectSource, Trust, trusted_keyset};

use crate::agent::Agent;
use crate::error::{Error, Result, restore_error};
use crate::index::{Batch, FileRecord, HsmRecord, Index};
use crate::scan::{Stat, Walked, walk_parallel};
use crate::source_tree::SourceTree;

pub use journal::{Entry as JournalEntry, JOURNAL, Journal};
pub use recall::{
    BATCH, PathRecall, RecallFailure, RecallIdentity, Recalled, Recaller, recall_path,
    recall_paths, recall_targets_in,
};
pub use release::{Kept, ReleaseOptions, ReleaseReport, ReleaseStep, ReleasedFile, free_percent};
pub use state::{FileState, FileStatus, StatusReport, Totals};
pub use stub::{StubAttr, claim_holder};

pub(crate) use recall::open_path;
pub(crate) use release::relative_paths;

/// The paths given (absolute, or relative to the working directory), as
/// paths of the tree (relative to it); refused if one is outside it.
pub fn relative_paths_of(tree: &Path, paths: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    if paths.is_empty() {
        return Ok(vec![Vec::new()]);
    }
    relative_paths(tree, paths)
}

/// Whether a stub is the version the index archived at this path, not
/// written since: what a tier-out counts as unchanged.
pub(crate) fn stub_is_archived_version(
    stub: &cbfs_format::StubRecord,
    rec: &FileRecord,
    st: &crate::scan::Stat,
) -> bool {
    state::record_matches(stub, rec, st) && state::times_kept(stub, st)
}

pub(crate) use state::recall_ended;

/// Takes the recall journal into the agent's index.
pub(crate) fn absorb(agent: &Agent) -> Result<()> {
    let n = Journal::new(agent.index_dir()).absorb(&agent.index)?;
    if n > 0 {
        tracing::info!("took in {n} recalls made while another process held the index");
    }
    Ok(())
}

/// The keyset and snapshot trust of the agent's file system: its keyset,
/// or the store's newest keyset of the administrator its index pinned.
pub(crate) fn agent_trust(agent: &Agent, source: &dyn ObjectSource) -> Result<(Keyset, Trust)> {
    if let Some(ks) = &agent.keyset {
        return Ok((ks.clone(), Trust::new(ks.clone())));
    }
    let state = agent.index.state()?;
    let admin = state
        .admin_key
        .as_deref()
        .and_then(|h| public_key_from_hex(h).ok())
        .ok_or_else(|| {
            Error::Usage(
                "the index has not pinned an administrator yet: give --keyset KEYSET.json".into(),
            )
        })?;
    let anchors = Anchors {
        keyset_file: None,
        admin_key: None,
        pinned: Some(admin),
        secret: None,
    };
    let ks = trusted_keyset(source, &anchors, None)
        .map_err(|e| restore_error("the keyset could not be trusted", e))?;
    Ok((ks.clone(), Trust::new(ks)))
}

impl Agent {
    /// Releases archived files of `opts.tree` by policy (see
    /// [`ReleaseOptions`]). Waits for a run of this agent to end first.
    pub async fn release(self: &Arc<Self>, opts: ReleaseOptions) -> Result<ReleaseReport> {
        let _running = self.running().lock().await;
        let agent = self.clone();
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || release::run(&agent, &opts, rt))
            .await
            .map_err(|e| Error::Usage(format!("the release failed: {e}")))?
    }

    /// Sets or clears the no-release and no-archive flags of paths (index
    /// keys: relative to the tree). `None` leaves a flag as it is.
    pub fn set_flags(
        &self,
        paths: &[Vec<u8>],
        no_release: Option<bool>,
        no_archive: Option<bool>,
    ) -> Result<()> {
        let mut batch = Batch::default();
        for p in paths {
            let mut h = self.index.hsm(p)?.unwrap_or_default();
            if let Some(v) = no_release {
                h.no_release = v;
            }
            if let Some(v) = no_archive {
                h.no_archive = v;
            }
            batch.put_hsm(p, &h);
        }
        self.index.commit(batch)
    }
}

/// What `cbfs-tier status` looks at.
#[derive(Clone, Debug)]
pub struct StatusRequest {
    /// The tree the index's paths are relative to.
    pub tree: PathBuf,
    /// The agent's index (read only: a running agent may hold it).
    pub index: PathBuf,
    /// Files or directories inside the tree; the whole tree if empty.
    pub paths: Vec<PathBuf>,
}

/// The tiering state of every entry at or below the paths asked for
/// (directories themselves are not listed), with totals per state.
pub fn status(req: &StatusRequest) -> Result<StatusReport> {
    let index = if req.index.join("CURRENT").exists() {
        Some(Index::open_read_only(&req.index)?)
    } else {
        None
    };
    let (committed, snapshot) = match &index {
        Some(i) => {
            let s = i.state()?;
            (!s.dirty, s.last_snapshot.map(|l| l.sequence))
        }
        None => (true, None),
    };
    // Recalls not taken into the index yet, newest last.
    let journal: HashMap<Vec<u8>, journal::Entry> = Journal::new(&req.index)
        .read()?
        .into_iter()
        .filter_map(|e| e.path_bytes().map(|p| (p, e)))
        .collect();
    let rels = if req.paths.is_empty() {
        vec![Vec::new()]
    } else {
        relative_paths(&req.tree, &req.paths)?
    };
    let mut report = StatusReport::default();
    for rel in rels {
        let abs = if rel.is_empty() {
            req.tree.clone()
        } else {
            req.tree.join(std::ffi::OsStr::from_bytes(&rel))
        };
        let meta = match std::fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) => {
                report.problems.push(format!("{}: {e}", abs.display()));
                continue;
            }
        };
        let one = |rel: Vec<u8>, abs: &Path, meta: &std::fs::Metadata| -> Result<FileStatus> {
            let (rec, hsm) = match &index {
                Some(i) => (i.file(&rel)?, i.hsm(&rel)?),
                None => (None, None),
            };
            let (rec, hsm) = overlay(rec, hsm, journal.get(&rel));
            let stub = if meta.is_file() {
                stub::read_at(abs).unwrap_or_else(|e| StubAttr::Damaged(e.to_string()))
            } else {
                StubAttr::None
            };
            Ok(state::classify(
                abs.display().to_string(),
                meta,
                rec.as_ref(),
                hsm.as_ref(),
                &stub,
                committed,
                snapshot,
            ))
        };
        if !meta.is_dir() {
            report.add(one(rel, &abs, &meta)?);
            continue;
        }
        let mut failed = None;
        let sub = match SourceTree::open(&abs) {
            Ok(t) => t,
            Err(e) => {
                report.problems.push(format!("{}: {e}", abs.display()));
                continue;
            }
        };
        walk_parallel(&sub, &abs, 2, 512, |items| {
            for w in items {
                match w {
                    Walked::Entry(e) => {
                        if failed.is_some() || e.stat.file_type() == libc::S_IFDIR {
                            continue;
                        }
                        let mut full = rel.clone();
                        if !full.is_empty() {
                            full.push(b'/');
                        }
                        full.extend_from_slice(&e.rel);
                        match std::fs::symlink_metadata(&e.abs) {
                            Ok(m) => match one(full, &e.abs, &m) {
                                Ok(f) => report.add(f),
                                Err(err) => failed = Some(err),
                            },
                            Err(err) => report.problems.push(format!("{}: {err}", e.abs.display())),
                        }
                    }
                    Walked::Problem(p) => report.problems.push(format!("{}: {}", p.path, p.reason)),
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(report)
}

/// A journal entry applied to the index's records of its path, as
/// [`Journal::absorb`] would.
fn overlay(
    rec: Option<FileRecord>,
    hsm: Option<HsmRecord>,
    entry: Option<&journal::Entry>,
) -> (Option<FileRecord>, Option<HsmRecord>) {
    let (Some(mut rec), Some(e)) = (rec.clone(), entry) else {
        return (rec, hsm);
    };
    if rec.member.to_string() != e.member || rec.slot != e.slot || rec.stat.ino != e.ino {
        return (Some(rec), hsm);
    }
    let mut h = hsm.unwrap_or_default();
    match (&e.stat, &e.lost) {
        (Some(st), _) => {
            rec.stat = *st;
            h.lost = None;
            h.recalling = None;
        }
        (None, Some(why)) => {
            h.lost = Some(why.clone());
            h.recalling = None;
        }
        (None, None) if e.recalling => h.recalling = Some(e.at),
        _ => {}
    }
    (Some(rec), Some(h))
}

use std::os::unix::ffi::OsStrExt;

/// The size of the recall journal past which a recall outside the agent
/// ([`absorb_if_grown`]) takes it in: about 120,000 files recalled.
pub const JOURNAL_TAKE_IN: u64 = 64 << 20;

/// The recall journal of the index in `index_dir`, taken in if it holds
/// more than [`JOURNAL_TAKE_IN`] bytes and no other process holds that
/// index. A recall is waited for, and taking the journal in is not: below
/// that size it is left to the next holder of the index (a tier-out, a
/// release, the agent), as a fault-in handler's entries are, and `status`
/// reads it meanwhile. Taking in the 40,000 entries of a recall of 20,000
/// files took 0.13 s, a tenth of that recall.
pub fn absorb_if_grown(index_dir: &Path) -> Result<()> {
    let size = std::fs::metadata(index_dir.join(JOURNAL)).map_or(0, |m| m.len());
    if size <= JOURNAL_TAKE_IN {
        return Ok(());
    }
    absorb_if_free(index_dir)
}

/// The recall journal of the index in `index_dir`, taken in if no other
/// process holds that index (else its holder takes it in later).
pub fn absorb_if_free(index_dir: &Path) -> Result<()> {
    if !index_dir.join("CURRENT").exists() {
        return Ok(());
    }
    let lock = match crate::lock::IndexLock::acquire(index_dir) {
        Ok(l) => l,
        Err(Error::Busy { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let index = Index::open(index_dir)?;
    Journal::new(index_dir).absorb(&index)?;
    drop(index);
    drop(lock);
    Ok(())
}

/// Where a recaller outside a running agent (`cbfs-tier recall`, `watch`)
/// finds its file system.
pub struct RecallerOptions {
    /// The store spec.
    pub store: String,
    /// The agent's index directory: it pins the administrator, and its
    /// recall journal learns what the recalls did.
    pub index: PathBuf,
    /// What to trust beyond the index.
    pub trust: crate::restore::TrustOptions,
    /// Whose key opens the lockboxes.
    pub identity: RecallIdentity,
    /// The longest one store call of a recall may take, retries
    /// included: then the recall fails as unavailable (a reader gets EIO).
    pub store_timeout: std::time::Duration,
}

/// Opens a recaller: the store, the keyset it trusts, the identity's key.
/// From a thread that may block (not an async task).
pub fn open_recaller(opts: &RecallerOptions, rt: tokio::runtime::Handle) -> Result<Recaller> {
    let source = crate::source::StoreSource::new(cbfs_store::Store::open(&opts.store)?, rt.clone())
        .with_timeout(opts.store_timeout);
    let (seed, key_file) = match &opts.identity {
        RecallIdentity::Secret(src) | RecallIdentity::User { identity: src, .. } => {
            let file = match src {
                cbfs_core::KeySource::File(p) => Some(p.clone()),
                _ => None,
            };
            (src.load(&cbfs_keysource::unlock_from_env())?, file)
        }
    };
    let mut trust_opts = opts.trust.clone();
    if trust_opts.index.is_none() {
        trust_opts.index = Some(opts.index.clone());
    }
    let t = crate::restore::trusted(&source, &trust_opts, Some(&seed), key_file.as_deref())?;
    drop(seed);
    Recaller::new(
        source,
        &t.keyset,
        t.trust,
        &opts.identity,
        rt,
        Some(&opts.index),
    )
}

/// A path of the tree to recall: a file named, or a stub found below a
/// folder named (with the stat the walk found).
#[derive(Clone, Debug)]
pub struct RecallTarget {
    /// Its path in the tree.
    pub rel: Vec<u8>,
    /// Its stat when a walk listed it as a stub; `None` for a path named
    /// (a recall of it first checks that it is a stub: a resident file is
    /// not opened for writing).
    pub stat: Option<Stat>,
    /// Where its content is stored, as its stub record said when the walk
    /// listed it: the passes of a recall follow the store's order.
    pub stored: Option<StoredAt>,
}

/// Where a released file's content is stored, as its stub record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredAt {
    /// The sequence of the snapshot it was released from.
    pub sequence: u64,
    /// Its segment.
    pub segment: cbfs_format::SegmentId,
    /// Its member.
    pub member: cbfs_format::MemberId,
    /// Its slot in the member.
    pub slot: u16,
}

/// What a recall of `rel` (a path of the tree) covers: the path itself
/// when it names a file (or nothing that exists: the recall then says
/// why), else every regular file at or below it that carries a stub
/// record, with the stat the walk found (the passes group the names of an
/// inode by it, instead of a `stat` of each path).
///
/// The records are read on several threads once the walk has listed the
/// files: read one by one as the walk went, they took 0.3–0.45 s of a
/// 20,000-file recall with a core idle, before its first pass began.
/// Resident files are left out here, not in the passes: a pass is sized
/// and flushed by the files it holds.
pub fn recall_targets(tree: &Path, rel: &[u8]) -> Vec<RecallTarget> {
    let named = || {
        vec![RecallTarget {
            rel: rel.to_vec(),
            stat: None,
            stored: None,
        }]
    };
    let abs = if rel.is_empty() {
        tree.to_owned()
    } else {
        tree.join(std::ffi::OsStr::from_bytes(rel))
    };
    let Ok(meta) = std::fs::symlink_metadata(&abs) else {
        return named();
    };
    if !meta.is_dir() {
        return named();
    }
    let Ok(sub) = SourceTree::open(&abs) else {
        return named();
    };
    let mut files: Vec<(RecallTarget, PathBuf)> = Vec::new();
    walk_parallel(&sub, &abs, 2, 512, |items| {
        for w in items {
            if let Walked::Entry(e) = w
                && e.stat.is_file()
            {
                let mut full = rel.to_vec();
                if !full.is_empty() {
                    full.push(b'/');
                }
                full.extend_from_slice(&e.rel);
                let target = RecallTarget {
                    rel: full,
                    stat: Some(e.stat),
                    stored: None,
                };
                files.push((target, e.abs));
            }
        }
    });
    // Two threads per core: reading a record that is not cached waits for
    // the disk.
    let threads = 2 * std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let share = files.len().div_ceil(threads).max(1);
    let stubs: Vec<Option<StoredAt>> = std::thread::scope(|s| {
        let checks: Vec<_> = files
            .chunks(share)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(_, abs)| match stub::read_record_at(abs) {
                            Ok(StubAttr::Stub(r)) => Some(StoredAt {
                                sequence: r.sequence,
                                segment: r.segment,
                                member: r.member,
                                slot: r.slot,
                            }),
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        checks
            .into_iter()
            .flat_map(|c| c.join().expect("a stub check"))
            .collect()
    });
    files
        .into_iter()
        .zip(stubs)
        .filter_map(|((target, _), stored)| {
            stored.map(|stored| RecallTarget {
                stored: Some(stored),
                ..target
            })
        })
        .collect()
}
