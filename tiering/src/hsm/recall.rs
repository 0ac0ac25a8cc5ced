//! Recall: a released file's content back in place, in the same inode,
//! from the member its stub record names, through the restore engine (the
//! same authentication of every chunk and the same check of the member's
//! bytes against the signed manifest's SHA-256 as any restore), before the
//! stub record goes. A recall that fails leaves the stub as it was, and
//! marks the file lost only when the stored copy is proven bad.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cbfs_core::{KeySource, Keyset, Seed, UserSecret};
use cbfs_format::{EntryKind, Metadata, SnapshotId, StubPhase, StubRecord};
use cbfs_restore::{
    LockboxOpener, MemberFile, RestoreOptions, Sink, Snapshot, Trust, identify, open_snapshot,
    restore_files,
};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::remote::{NodeOpener, NodeOptions};
use crate::scan::Stat;
use crate::source::StoreSource;

use super::journal::{Entry, Journal};
use super::stub::{self, StubAttr};

/// Whose key opens the lockboxes of a recall. Never a root secret online
/// for an unattended agent: it recalls with its own user key, delegated
/// through the nodes like any user's.
pub enum RecallIdentity {
    /// The administrator's root secret, or a scope secret.
    Secret(KeySource),
    /// A user key (the agent's or gateway's own), through the delegation
    /// nodes.
    User {
        /// The secret.
        identity: KeySource,
        /// The user: a `NAME.pub` file or a name.
        user: String,
        /// The nodes' URLs.
        nodes: Vec<String>,
        /// How long one node gets to answer.
        timeout: Duration,
    },
}

/// Why a recall failed. The stub is as it was in every case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "reason", rename_all = "lowercase")]
pub enum RecallFailure {
    /// The store or the nodes could not be reached: try again later.
    Unavailable(String),
    /// The stored copy is missing or failed verification: the file is
    /// marked lost.
    Lost(String),
    /// Something else refused (a key, a delegation, the stub record).
    Refused(String),
}

impl RecallFailure {
    /// The reason, in words.
    pub fn reason(&self) -> &str {
        match self {
            RecallFailure::Unavailable(r) | RecallFailure::Lost(r) | RecallFailure::Refused(r) => r,
        }
    }
}

impl std::fmt::Display for RecallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecallFailure::Unavailable(r) => write!(f, "unavailable (retry later): {r}"),
            RecallFailure::Lost(r) => write!(f, "the stored copy is bad (marked lost): {r}"),
            RecallFailure::Refused(r) => write!(f, "refused: {r}"),
        }
    }
}

/// What a recall did.
#[derive(Clone, Debug, Serialize)]
pub struct Recalled {
    /// Content bytes written back.
    pub bytes: u64,
    /// The snapshot it came from.
    pub snapshot: u64,
    /// Seconds it took (recalled with others in one pass: since the pass
    /// began).
    pub seconds: f64,
    /// Bytes read from the store (recalled with others in one pass: an
    /// equal share of what the pass read).
    pub fetched: u64,
}

/// The error codes of the restore engine that prove a stored copy bad
/// (as opposed to a store that did not answer, or a key that did not
/// open).
fn proves_bad(code: &str) -> bool {
    matches!(
        code,
        "missing_object"
            | "hash_mismatch"
            | "payload_auth"
            | "payload_truncated"
            | "corrupt_plaintext"
            | "header_mac"
            | "member_header"
            | "summary_mismatch"
            | "tar"
            | "content_length"
            | "malformed"
            | "bad_brand"
            | "no_snapshot"
    )
}

fn classify(e: &cbfs_restore::Error) -> RecallFailure {
    if e.is_transient() {
        RecallFailure::Unavailable(e.to_string())
    } else if proves_bad(e.code()) {
        RecallFailure::Lost(e.to_string())
    } else {
        RecallFailure::Refused(e.to_string())
    }
}

/// Recalls released files of one file system: its store, the snapshots
/// it trusts, and whose key opens the lockboxes. Shared by every thread
/// of a fault-in handler, a gateway, or `cbfs-tier recall`.
pub struct Recaller {
    source: StoreSource,
    trust: Trust,
    fs: String,
    opener: Box<dyn LockboxOpener + Send + Sync>,
    snapshots: Mutex<HashMap<SnapshotId, Arc<Snapshot>>>,
    journal: Option<Journal>,
}

fn copy(seed: &Seed) -> Seed {
    Seed::from_slice(seed.expose_secret_bytes(), "identity").expect("32 bytes")
}

impl Recaller {
    /// A recaller for the file system of `keyset` (trusted by the caller),
    /// reading `source`, opening lockboxes as `identity`. Recalls are
    /// written to the journal of the index in `index_dir`, if given.
    pub fn new(
        source: StoreSource,
        keyset: &Keyset,
        trust: Trust,
        identity: &RecallIdentity,
        rt: tokio::runtime::Handle,
        index_dir: Option<&Path>,
    ) -> Result<Self> {
        let opener: Box<dyn LockboxOpener + Send + Sync> = match identity {
            RecallIdentity::Secret(src) => {
                let seed = src.load(&cbfs_keysource::unlock_from_env())?;
                match identify(copy(&seed), keyset) {
                    Some(id) => Box::new(id),
                    None => {
                        return Err(Error::Usage(format!(
                            "{src} is neither the root secret nor a scope secret of `{}`; an agent \
                             recalls with its own user key through the delegation nodes: \
                             --identity KEY --user NAME.pub --node URL...",
                            keyset.fs()
                        )));
                    }
                }
            }
            RecallIdentity::User {
                identity,
                user,
                nodes,
                timeout,
            } => {
                if nodes.is_empty() {
                    return Err(Error::Usage(
                        "a user key recalls through the delegation nodes: give --node URL..."
                            .into(),
                    ));
                }
                let secret =
                    UserSecret::from_seed(identity.load(&cbfs_keysource::unlock_from_env())?);
                let name = crate::restore::user_name(user, &secret)?;
                Box::new(NodeOpener::new(
                    rt,
                    secret,
                    keyset,
                    NodeOptions {
                        urls: nodes,
                        user: name,
                        timeout: *timeout,
                        path: "/".into(),
                        gateway: None,
                    },
                )?)
            }
        };
        Ok(Recaller {
            source,
            trust,
            fs: keyset.fs().to_string(),
            opener,
            snapshots: Mutex::new(HashMap::new()),
            journal: index_dir.map(Journal::new),
        })
    }

    /// The file system's name.
    pub fn fs(&self) -> &str {
        &self.fs
    }

    /// The store, as the restore engine reads it.
    pub fn source(&self) -> &StoreSource {
        &self.source
    }

    /// The verified snapshot with this id, opened once.
    fn snapshot(&self, id: SnapshotId) -> std::result::Result<Arc<Snapshot>, cbfs_restore::Error> {
        if let Some(s) = self.snapshots.lock().expect("snapshots").get(&id) {
            return Ok(s.clone());
        }
        let s = Arc::new(open_snapshot(
            &self.source,
            &self.trust,
            Some(&id.to_string()),
        )?);
        self.snapshots
            .lock()
            .expect("snapshots")
            .insert(id, s.clone());
        Ok(s)
    }

    /// The snapshot a stub record names, or (if the store no longer holds
    /// it) the newest, which still holds the member if the file was not
    /// changed or deleted since.
    fn snapshot_for(
        &self,
        record: &StubRecord,
    ) -> std::result::Result<Arc<Snapshot>, RecallFailure> {
        match self.snapshot(record.snapshot) {
            Ok(s) => return Ok(s),
            Err(e) if e.is_transient() => return Err(classify(&e)),
            Err(cbfs_restore::Error::NoSnapshot(_)) => {}
            Err(e) => return Err(RecallFailure::Refused(e.to_string())),
        }
        let newest = open_snapshot(&self.source, &self.trust, None).map_err(|e| classify(&e))?;
        let newest = Arc::new(newest);
        self.snapshots
            .lock()
            .expect("snapshots")
            .insert(newest.id(), newest.clone());
        Ok(newest)
    }

    /// Fills the released file open as `file` (read-write) back from the
    /// store, verifies it, restores its modification time and removes its
    /// stub record. On failure the content written so far is dropped
    /// again, and the stub stays.
    pub fn recall_file(
        &self,
        file: &File,
        record: &StubRecord,
    ) -> std::result::Result<Recalled, RecallFailure> {
        self.recall_files(&[(file, record)])
            .pop()
            .expect("one result per file")
    }

    /// [`recall_file`](Self::recall_file) for many stubs at once: one pass
    /// of the restore engine per snapshot (each segment's summary and
    /// lockboxes read once for all its files). One result per stub, in
    /// order.
    pub fn recall_files(
        &self,
        stubs: &[(&File, &StubRecord)],
    ) -> Vec<std::result::Result<Recalled, RecallFailure>> {
        let mut pass = self.mark(stubs, None);
        let flushed = stub::make_durable_on(&pass.marked(stubs));
        self.fill(stubs, &mut pass, flushed.as_ref().err(), None);
        let flushed = stub::make_durable_on(&pass.cleared(stubs));
        self.close(stubs, pass, flushed.as_ref().err())
    }

    /// The first step of a recall of `stubs`: each stub is marked as being
    /// recalled ([`cbfs_format::RECALL_XATTR`]; not durable yet: the caller
    /// makes [`StubPass::marked`] durable before [`fill`](Self::fill)).
    /// `known`: each stub's inode, where the caller has it (else each file
    /// is `stat`ed).
    fn mark(&self, stubs: &[(&File, &StubRecord)], known: Option<&[Inode]>) -> StubPass {
        let mut pass = StubPass {
            started: Instant::now(),
            results: stubs.iter().map(|_| None).collect(),
            same_as: vec![None; stubs.len()],
            devs: Vec::with_capacity(stubs.len()),
            groups: Vec::new(),
            cleared: Vec::new(),
        };
        // Names of one inode (hard links) share its stub: it is filled
        // once, and each name gets that fill's result.
        let mut inodes: HashMap<(u64, u64), usize> = HashMap::new();
        for (i, (file, record)) in stubs.iter().enumerate() {
            let inode = match known {
                Some(known) => Some(known[i]),
                None => rustix::fs::fstat(file).ok().map(|m| (m.st_dev, m.st_ino)),
            };
            pass.devs.push(inode.map(|(dev, _)| dev));
            if let Some(inode) = inode {
                match inodes.entry(inode) {
                    std::collections::hash_map::Entry::Occupied(e) => {
                        pass.same_as[i] = Some(*e.get());
                        continue;
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(i);
                    }
                }
            }
            if record.fs != self.fs {
                pass.results[i] = Some(Err(RecallFailure::Refused(format!(
                    "the stub belongs to file system `{}`, this agent serves `{}`",
                    record.fs, self.fs
                ))));
                continue;
            }
            let snapshot = match self.snapshot_for(record) {
                Ok(s) => s,
                Err(f) => {
                    pass.results[i] = Some(Err(f));
                    continue;
                }
            };
            // The fill changes the file's times: the stub is marked as
            // being recalled, so that a fill cut short is still a stub, not
            // a file written while released. The mark is an attribute of
            // its own, small enough to fit in the inode: the record, often
            // too large for it, is left as it is.
            if let Err(e) = stub::mark_recalling(file) {
                pass.results[i] = Some(Err(RecallFailure::Refused(format!(
                    "cannot mark the stub as being recalled: {e}"
                ))));
                continue;
            }
            match pass
                .groups
                .iter_mut()
                .find(|(s, _)| s.id() == snapshot.id())
            {
                Some((_, v)) => v.push(i),
                None => pass.groups.push((snapshot, vec![i])),
            }
        }
        pass
    }

    /// The second step, once the marks are durable (`unmarked`: the flush
    /// that was to make them so failed, and the stubs are put back): the
    /// content written and verified, made durable (one flush), then the
    /// times restored and the stub records removed (durable only after the
    /// caller makes [`StubPass::cleared`] so, before [`close`](Self::close)).
    /// `decode_threads` as in [`RestoreOptions::threads`].
    fn fill(
        &self,
        stubs: &[(&File, &StubRecord)],
        pass: &mut StubPass,
        unmarked: Option<&std::io::Error>,
        decode_threads: Option<usize>,
    ) {
        if let Some(e) = unmarked {
            for (_, at) in pass.groups.drain(..) {
                for i in at {
                    let (file, record) = stubs[i];
                    let f = RecallFailure::Refused(format!(
                        "cannot mark the stub as being recalled: {e}"
                    ));
                    pass.results[i] = Some(Err(self.undo(file, record, false, f)));
                }
            }
        }
        let mut filled: Vec<(usize, Recalled)> = Vec::new();
        for (snapshot, at) in std::mem::take(&mut pass.groups) {
            let fetched_before = cbfs_restore::ObjectSource::fetched(&self.source);
            let wanted: Vec<MemberFile> = at
                .iter()
                .map(|&i| {
                    let r = stubs[i].1;
                    MemberFile {
                        segment: r.segment,
                        member: r.member,
                        slot: r.slot,
                        sha256: r.sha256,
                    }
                })
                .collect();
            let mut sink = StubSink::new(at.iter().map(|&i| (stubs[i].0, stubs[i].1)).collect());
            let result = restore_files(
                &self.source,
                &snapshot,
                self.opener.as_ref(),
                &wanted,
                &RestoreOptions {
                    threads: decode_threads,
                    ..RestoreOptions::default()
                },
                &mut sink,
            );
            let fetched = cbfs_restore::ObjectSource::fetched(&self.source) - fetched_before;
            for (k, &i) in at.iter().enumerate() {
                let (file, record) = stubs[i];
                let failure = match &result {
                    Err(e) => Some(classify(e)),
                    Ok(_) if sink.committed[k] => None,
                    Ok(report) => Some(self.why_not(report, record, &snapshot)),
                };
                match failure {
                    Some(f) => {
                        pass.results[i] = Some(Err(self.undo(file, record, sink.began[k], f)))
                    }
                    None => filled.push((
                        i,
                        Recalled {
                            bytes: record.size,
                            snapshot: snapshot.sequence(),
                            seconds: 0.0,
                            fetched: fetched / at.len() as u64,
                        },
                    )),
                }
            }
        }
        // The content is durable before the stub records go: one flush for
        // every snapshot's files.
        let files: Vec<(Option<u64>, &File)> = filled
            .iter()
            .map(|&(i, _)| (pass.devs[i], stubs[i].0))
            .collect();
        if let Err(e) = stub::make_durable_on(&files) {
            for (i, _) in filled {
                pass.results[i] = Some(Err(unfinished(&e)));
            }
            return;
        }
        // The journal learns that these recalls are ending before their
        // records go: a kill after a record is removed and before the
        // journal learns the file's new stat leaves the file whole, with
        // no record and a new change time, and the next tier-out would
        // otherwise count it changed and store it again.
        if let Some(j) = &self.journal {
            let at = now();
            let intents: Vec<Entry> = filled
                .iter()
                .map(|&(i, _)| {
                    let record = stubs[i].1;
                    Entry {
                        path: hex::encode(&record.path),
                        member: record.member.to_string(),
                        slot: record.slot,
                        ino: record.inode,
                        stat: None,
                        lost: None,
                        at,
                        recalling: true,
                    }
                })
                .collect();
            if let Err(e) = j.append_all(&intents) {
                tracing::warn!(
                    "{e}: a recall killed before its end is journaled would make the next \
                     tier-out archive these files again"
                );
            }
        }
        for (i, done) in filled {
            let (file, record) = stubs[i];
            let clear = || -> std::io::Result<Stat> {
                stub::set_mtime(file, record.mtime)?;
                stub::clear(file)?;
                Ok(Stat::from_rustix(&rustix::fs::fstat(file)?))
            };
            match clear() {
                Ok(stat) => pass.cleared.push((i, stat, done)),
                Err(e) => pass.results[i] = Some(Err(unfinished(&e))),
            }
        }
    }

    /// The last step, once the cleared records are durable (`uncleared`:
    /// the flush that was to make them so failed): the journal learns the
    /// files' new stats. One result per stub, in order.
    fn close(
        &self,
        stubs: &[(&File, &StubRecord)],
        mut pass: StubPass,
        uncleared: Option<&std::io::Error>,
    ) -> Vec<std::result::Result<Recalled, RecallFailure>> {
        let seconds = pass.started.elapsed().as_secs_f64();
        let cleared = std::mem::take(&mut pass.cleared);
        if let Some(e) = uncleared {
            for (i, _, _) in cleared {
                pass.results[i] = Some(Err(unfinished(e)));
            }
        } else {
            #[cfg(feature = "crash-points")]
            if !cleared.is_empty()
                && std::env::var("CBFS_TEST_RECALL_CRASH").as_deref() == Ok("cleared")
            {
                eprintln!("cbfs-tier: crashing on purpose once the stub records are cleared");
                std::process::abort();
            }
            if let Some(j) = &self.journal {
                let entries: Vec<Entry> = cleared
                    .iter()
                    .map(|(i, stat, _)| {
                        let record = stubs[*i].1;
                        Entry {
                            path: hex::encode(&record.path),
                            member: record.member.to_string(),
                            slot: record.slot,
                            ino: stat.ino,
                            stat: Some(*stat),
                            lost: None,
                            at: now(),
                            recalling: false,
                        }
                    })
                    .collect();
                if let Err(e) = j.append_all(&entries) {
                    tracing::warn!("{e}: the next tier-out may archive these files again");
                }
            }
            for (i, _, done) in cleared {
                pass.results[i] = Some(Ok(Recalled { seconds, ..done }));
            }
        }
        for (i, first) in pass.same_as.iter().enumerate() {
            if let Some(first) = first {
                pass.results[i] = pass.results[*first].clone();
            }
        }
        pass.results
            .into_iter()
            .map(|r| r.expect("a result per stub"))
            .collect()
    }

    /// Why a restore pass did not commit a stub's file: the failure about
    /// its member (or its segment), or what else the report says.
    fn why_not(
        &self,
        report: &cbfs_restore::Report,
        record: &StubRecord,
        snapshot: &Snapshot,
    ) -> RecallFailure {
        let member = record.member.to_string();
        let segment = record.segment.to_string();
        let f = report
            .failures
            .iter()
            .find(|f| f.member.as_deref() == Some(member.as_str()))
            .or_else(|| {
                report
                    .failures
                    .iter()
                    .find(|f| f.member.is_none() && f.object.contains(&segment))
            });
        if let Some(f) = f {
            return if f.code == "unavailable" {
                RecallFailure::Unavailable(f.error.clone())
            } else if proves_bad(&f.code) {
                RecallFailure::Lost(format!("{}: {}", f.object, f.error))
            } else {
                RecallFailure::Refused(format!("{}: {}", f.object, f.error))
            };
        }
        match report.skipped_scopes.keys().next() {
            Some(scope) => RecallFailure::Refused(format!(
                "{} has no key for scope `{scope}`",
                self.opener.describe()
            )),
            None => match report.failures.first() {
                // A failure not about this member stopped the pass.
                Some(f) if f.code == "unavailable" => RecallFailure::Unavailable(f.error.clone()),
                Some(f) => RecallFailure::Refused(format!("{}: {}", f.object, f.error)),
                None => RecallFailure::Lost(format!(
                    "snapshot {} yields no file for member {} slot {}",
                    snapshot.sequence(),
                    record.member,
                    record.slot
                )),
            },
        }
    }

    /// Puts a stub back as it was after a failed recall: what was written
    /// (not proven) dropped again, its time and its record as released.
    fn undo(
        &self,
        file: &File,
        record: &StubRecord,
        began: bool,
        f: RecallFailure,
    ) -> RecallFailure {
        let undo = || -> std::io::Result<()> {
            if began {
                stub::punch(file, record.size)?;
            }
            stub::set_mtime(file, record.mtime)?;
            stub::write(
                file,
                &StubRecord {
                    phase: StubPhase::Released,
                    ..record.clone()
                },
            )
        };
        if let Err(e) = undo() {
            tracing::error!("cannot put the stub back as it was: {e}");
        }
        if let RecallFailure::Lost(why) = &f {
            self.note_lost(file, record, why);
        }
        f
    }

    fn note_lost(&self, file: &File, record: &StubRecord, why: &str) {
        tracing::error!(
            path = %String::from_utf8_lossy(&record.path),
            "the stored copy of this released file is bad: {why}"
        );
        let Some(j) = &self.journal else { return };
        let ino = file
            .metadata()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(record.inode);
        if let Err(e) = j.append(&Entry {
            path: hex::encode(&record.path),
            member: record.member.to_string(),
            slot: record.slot,
            ino,
            stat: None,
            lost: Some(why.to_owned()),
            at: now(),
            recalling: false,
        }) {
            tracing::warn!("{e}");
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Testing only (builds with `crash-points`): `CBFS_TEST_FILL_DELAY_MS`
/// slows each piece of a recall down, so that a test can kill a handler
/// while a reader waits.
#[cfg(feature = "crash-points")]
fn test_fill_delay() {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    if let Some(d) = DELAY.get_or_init(|| {
        std::env::var("CBFS_TEST_FILL_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    }) {
        std::thread::sleep(*d);
    }
}

fn unfinished(e: &dyn std::fmt::Display) -> RecallFailure {
    RecallFailure::Refused(format!(
        "the content is back but the stub could not be finished: {e}"
    ))
}

/// A recall of many stubs under way (each named by its index in the
/// stubs given): marked, filled and cleared, and closed, each step made
/// durable by a flush before the next (see [`Recaller::recall_files`]; a
/// recall of many paths lets one flush end a pass and begin the next).
struct StubPass {
    started: Instant,
    results: Vec<Option<std::result::Result<Recalled, RecallFailure>>>,
    /// The first name of the same inode, for each other name.
    same_as: Vec<Option<usize>>,
    /// The device each stub is on, where known.
    devs: Vec<Option<u64>>,
    /// Marked, by snapshot, in order of first appearance.
    groups: Vec<(Arc<Snapshot>, Vec<usize>)>,
    /// Filled, their times restored and stub records removed.
    cleared: Vec<(usize, Stat, Recalled)>,
}

impl StubPass {
    /// The files whose marks must be durable before they are filled.
    /// With the device each is on, where known.
    fn marked<'f>(&self, stubs: &[(&'f File, &StubRecord)]) -> Vec<(Option<u64>, &'f File)> {
        self.groups
            .iter()
            .flat_map(|(_, at)| at.iter().map(|&i| (self.devs[i], stubs[i].0)))
            .collect()
    }

    /// The files whose cleared records must be durable before the journal
    /// names them.
    /// With the device each is on, where known.
    fn cleared<'f>(&self, stubs: &[(&'f File, &StubRecord)]) -> Vec<(Option<u64>, &'f File)> {
        self.cleared
            .iter()
            .map(|&(i, _, _)| (self.devs[i], stubs[i].0))
            .collect()
    }
}

/// Writes the restored content of each file into its stub's own inode,
/// found by the path the stub was archived under.
struct StubSink<'f> {
    stubs: Vec<(&'f File, &'f StubRecord)>,
    by_path: HashMap<Vec<u8>, usize>,
    current: Option<usize>,
    written: u64,
    began: Vec<bool>,
    committed: Vec<bool>,
    writeback: stub::Writeback,
}

impl<'f> StubSink<'f> {
    fn new(stubs: Vec<(&'f File, &'f StubRecord)>) -> Self {
        let by_path = stubs
            .iter()
            .enumerate()
            .map(|(i, (_, r))| (r.path.clone(), i))
            .collect();
        let n = stubs.len();
        StubSink {
            stubs,
            by_path,
            current: None,
            written: 0,
            began: vec![false; n],
            committed: vec![false; n],
            writeback: stub::Writeback::default(),
        }
    }

    fn out(e: std::io::Error) -> cbfs_restore::Error {
        cbfs_restore::Error::Output {
            target: "a released file".into(),
            source: e,
            fatal: false,
        }
    }
}

impl Sink for StubSink<'_> {
    fn begin_file(&mut self, meta: &Metadata) -> cbfs_restore::Result<()> {
        let Some(&i) = self.by_path.get(&meta.path) else {
            return Err(cbfs_restore::Error::Unsupported {
                path: String::from_utf8_lossy(&meta.path).into_owned(),
                reason: "the member holds a file no stub asked for".into(),
            });
        };
        let size = self.stubs[i].1.size;
        if meta.kind != EntryKind::File || meta.size != size {
            return Err(cbfs_restore::Error::Unsupported {
                path: String::from_utf8_lossy(&meta.path).into_owned(),
                reason: format!(
                    "the member holds a {:?} of {} bytes, the stub is a file of {size} bytes",
                    meta.kind, meta.size
                ),
            });
        }
        self.current = Some(i);
        self.began[i] = true;
        self.written = 0;
        Ok(())
    }

    fn write_content(&mut self, data: &[u8]) -> cbfs_restore::Result<()> {
        #[cfg(feature = "crash-points")]
        test_fill_delay();
        let i = self.current.expect("a file was begun");
        let file = self.stubs[i].0;
        file.write_all_at(data, self.written).map_err(Self::out)?;
        self.written += data.len() as u64;
        self.writeback.wrote(file, data.len() as u64);
        Ok(())
    }

    fn commit_file(&mut self) -> cbfs_restore::Result<()> {
        let i = self.current.take().expect("a file was begun");
        let size = self.stubs[i].1.size;
        if self.written != size {
            return Err(Self::out(std::io::Error::other(format!(
                "{} bytes restored, the stub is {size} bytes",
                self.written
            ))));
        }
        self.committed[i] = true;
        Ok(())
    }

    fn abort_file(&mut self) {
        if let Some(i) = self.current.take() {
            self.committed[i] = false;
        }
    }

    fn add_entry(&mut self, meta: &Metadata) -> cbfs_restore::Result<()> {
        Err(cbfs_restore::Error::Unsupported {
            path: String::from_utf8_lossy(&meta.path).into_owned(),
            reason: "a stub is a regular file; the member holds another kind of entry".into(),
        })
    }

    fn finish(&mut self) -> cbfs_restore::Result<()> {
        Ok(())
    }
}

/// What a recall of one path came to.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum PathRecall {
    /// Filled back by this call.
    Recalled(Recalled),
    /// It was not released.
    Resident,
    /// It was there when the recall began, and was removed or renamed
    /// before its pass opened it: nothing to recall.
    Gone,
    /// Filled by the time this call opened it (or came to open it): by a
    /// fault-in handler watching it, which fills a stub as it is opened,
    /// or by another recall since the folder it is in was listed.
    FilledOnOpen,
    /// The recall failed; the stub is as it was.
    Failed(RecallFailure),
}

/// Recalls the released file at `path` (opened beneath `root`, with no
/// symbolic link on the way). If a fault-in handler watches the file, the
/// open alone fills it; otherwise the file is filled here, under a claim
/// (see `stub.rs`): a handler lets this process's writes through and makes
/// every other process wait until it is done.
pub fn recall_path(recaller: &Recaller, root: &Path, rel: &[u8]) -> Result<PathRecall> {
    Ok(recall_paths(recaller, root, &[rel.to_vec()])?
        .pop()
        .expect("one result per path"))
}

/// [`recall_path`] for many paths: the stubs among them are filled in
/// passes of up to [`BATCH`] files and [`PASS_BYTES`] bytes (one restore
/// pass per snapshot each), two runs of passes per core at a time. The names
/// of one inode (hard links, a path given twice) go into one pass, which
/// fills the inode once.
/// One result per path, in order.
///
/// Each pass is made durable in three steps (see [`Recaller::recall_files`]):
/// its stubs marked as being recalled, then its content, then its cleared
/// stub records before the journal names them. In each worker the flush
/// that ends one pass (its cleared records) is the one that begins the
/// next (its marks): two flushes a pass instead of three.
pub fn recall_paths(recaller: &Recaller, root: &Path, rels: &[Vec<u8>]) -> Result<Vec<PathRecall>> {
    let order: Vec<usize> = (0..rels.len()).collect();
    recall_listed(recaller, root, rels, &vec![None; rels.len()], &order)
}

/// [`recall_paths`] for what [`recall_targets`](super::recall_targets)
/// listed: the stats the walk found spare a `stat` of each path before
/// the passes are made. One result per target, in order.
pub fn recall_targets_in(
    recaller: &Recaller,
    root: &Path,
    targets: &[super::RecallTarget],
) -> Result<Vec<PathRecall>> {
    let rels: Vec<Vec<u8>> = targets.iter().map(|t| t.rel.clone()).collect();
    let stats: Vec<Option<Stat>> = targets.iter().map(|t| t.stat).collect();
    // A few files make one pass, which reads each member it wants once in
    // any order: the summaries are not worth reading for them.
    let order = if targets.len() <= FEWEST {
        (0..targets.len()).collect()
    } else {
        storage_order(recaller, targets)
    };
    recall_listed(recaller, root, &rels, &stats, &order)
}

/// Segment summaries read at once by [`storage_order`].
const SUMMARY_READERS: usize = 8;

/// The order in which to recall `targets` (indices): as the store holds
/// their content, by snapshot, segment and place in the segment (from the
/// segments' summaries; in a segment, those whose offset is not known after
/// the others, as listed), then those whose place is not known at all, as
/// listed. A pass reads each member it wants, and each pack (a member of
/// many small files) up to the last file it wants from it: in the order a
/// walk lists them, passes wanted parts of the same packs and segments,
/// and read about a quarter more than in this order.
fn storage_order(recaller: &Recaller, targets: &[super::RecallTarget]) -> Vec<usize> {
    let mut wanted: HashMap<
        cbfs_format::SegmentId,
        std::collections::HashSet<cbfs_format::MemberId>,
    > = HashMap::new();
    for s in targets.iter().filter_map(|t| t.stored) {
        wanted.entry(s.segment).or_default().insert(s.member);
    }
    let segments: Vec<_> = wanted.iter().collect();
    // A summary that cannot be read leaves its members' places unknown: the
    // recall itself then says what is wrong with the segment. Read a few at
    // a time (a store may be remote), and no more once the store has not
    // answered: the order is not worth a timeout per segment.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let down = std::sync::atomic::AtomicBool::new(false);
    let read = || {
        use std::sync::atomic::Ordering;
        let mut found: Vec<((cbfs_format::SegmentId, cbfs_format::MemberId), u64)> = Vec::new();
        while !down.load(Ordering::SeqCst) {
            let Some((seg, members)) = segments.get(next.fetch_add(1, Ordering::SeqCst)) else {
                break;
            };
            let key = cbfs_format::layout::summary(seg);
            let summary = match cbfs_restore::ObjectSource::get(&recaller.source, &key) {
                Ok(bytes) => cbfs_format::Summary::from_bytes(&bytes),
                Err(e) => {
                    tracing::debug!(
                        "{key}: {e}; its files are recalled in the order listed, after the placed ones of their segment"
                    );
                    if e.is_transient() {
                        down.store(true, Ordering::SeqCst);
                    }
                    continue;
                }
            };
            match summary {
                Ok(summary) if summary.segment_id() == **seg => found.extend(
                    members
                        .iter()
                        .filter_map(|m| summary.entry(m).map(|e| ((**seg, *m), e.header_offset))),
                ),
                _ => tracing::debug!("{key} does not parse as its segment's summary"),
            }
        }
        found
    };
    let readers = SUMMARY_READERS.min(segments.len());
    let places: HashMap<(cbfs_format::SegmentId, cbfs_format::MemberId), u64> =
        std::thread::scope(|s| {
            let readers: Vec<_> = (0..readers).map(|_| s.spawn(read)).collect();
            readers
                .into_iter()
                .flat_map(|r| r.join().expect("a summary reader"))
                .collect()
        });
    in_place_order(targets, |s| places.get(&(s.segment, s.member)).copied())
}

/// `targets` (indices) by snapshot, segment, then the member's offset in
/// it (`offset`), member and slot; in a segment, those whose offset is not
/// known after the others, in their order; those whose place is not known
/// at all last, in their order.
fn in_place_order(
    targets: &[super::RecallTarget],
    offset: impl Fn(&super::StoredAt) -> Option<u64>,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by_cached_key(|&i| {
        let at = targets[i].stored.map(|s| {
            let at = offset(&s).map(|o| (o, s.member, s.slot));
            (s.sequence, s.segment, at.is_none(), at)
        });
        (at.is_none(), at, i)
    });
    order
}

/// [`recall_paths`], with the stat of each path where it is known
/// (`stats[i]` for `rels[i]`; a regular file's, listed beneath `root`),
/// in passes that take the paths in `order` (indices into `rels`, each
/// once).
fn recall_listed(
    recaller: &Recaller,
    root: &Path,
    rels: &[Vec<u8>],
    stats: &[Option<Stat>],
    order: &[usize],
) -> Result<Vec<PathRecall>> {
    // Two workers per core: while one waits for a flush (most of a pass
    // of small files is spent waiting for the disk), the other computes.
    let workers = 2 * std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    let tree = crate::source_tree::SourceTree::open(root)
        .map_err(|e| Error::io("cannot open", root, e))?;
    // Each worker holds two passes open at once: one closing, the next
    // beginning.
    let size = balanced(rels.len(), workers, pass_size(2 * workers));
    let (batches, grouped_by) = batches(root, rels, stats, order, size);
    let workers = workers.min(batches.len());
    // Passes on several workers at once each decode their members on their
    // own worker's thread. With decoding threads of their own (one per
    // core each), every pass also held up to 64 MiB decoded ahead: 170 to
    // 280 MiB at the peak with four workers, against about 120 MiB now,
    // and a little less CPU. One pass alone decodes on every core.
    let decode_threads = (workers > 1).then_some(1);
    let done: Vec<Mutex<Option<Result<Vec<PathRecall>>>>> =
        batches.iter().map(|_| Mutex::new(None)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let work = || {
        use std::sync::atomic::Ordering;
        // The pass filled last: its stub records cleared, not yet durable.
        let mut closing: Option<(usize, PathPass)> = None;
        loop {
            let mut opening: Option<(usize, PathPass)> = None;
            if !failed.load(Ordering::SeqCst) {
                let b = next.fetch_add(1, Ordering::SeqCst);
                if let Some(batch) = batches.get(b) {
                    match PathPass::open(recaller, &tree, root, rels, &grouped_by, stats, batch) {
                        Ok(p) => opening = Some((b, p)),
                        Err(e) => {
                            // Stop taking passes; those under way finish.
                            failed.store(true, Ordering::SeqCst);
                            *done[b].lock().expect("recall results") = Some(Err(e));
                        }
                    }
                }
            }
            // One flush: the marks of the pass beginning before its
            // content is written, and the cleared records of the pass
            // ending before the journal names them.
            let mut files = Vec::new();
            if let Some((_, p)) = &closing {
                files.extend(p.recall.cleared(&p.stubs()));
            }
            if let Some((_, p)) = &opening {
                files.extend(p.recall.marked(&p.stubs()));
            }
            let flushed = stub::make_durable_on(&files);
            if let Some((b, p)) = closing.take() {
                let outcomes = p.close(recaller, flushed.as_ref().err());
                *done[b].lock().expect("recall results") = Some(Ok(outcomes));
            }
            let Some((b, mut p)) = opening else { break };
            p.fill(recaller, flushed.as_ref().err(), decode_threads);
            closing = Some((b, p));
        }
    };
    if workers <= 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(work);
            }
        });
    }
    let mut out: Vec<Option<PathRecall>> = rels.iter().map(|_| None).collect();
    for (batch, result) in batches.iter().zip(done) {
        match result.into_inner().expect("recall results") {
            Some(Ok(outcomes)) => {
                for (&i, o) in batch.iter().zip(outcomes) {
                    out[i] = Some(o);
                }
            }
            Some(Err(e)) => return Err(e),
            // Not taken after another pass failed.
            None => {}
        }
    }
    Ok(out
        .into_iter()
        .map(|o| o.expect("a result per path"))
        .collect())
}

/// How many files a pass holds at most when `passes` are open at once:
/// [`BATCH`], or fewer when the descriptor limit is low (a pass holds a
/// descriptor per file until it ends).
fn pass_size(passes: usize) -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let spare = usize::try_from(soft.saturating_sub(256)).unwrap_or(usize::MAX);
    (spare / passes.max(1)).clamp(16, BATCH)
}

/// The size of the passes of a recall of `files` on `workers`, at most
/// `most`: as many passes as a whole number of rounds of the workers
/// needs, all of about the same size. Passes of the largest size would
/// leave a last round of a few passes, or one, while the other workers
/// have nothing to do (20,000 files in passes of 1,234 made 16 full
/// passes, four rounds, and a seventeenth alone). When that makes passes
/// of fewer than [`FEWEST`] files (and `most` allows as many), a pass gets
/// that many, in as few rounds: a few files make fewer passes than there
/// are workers.
fn balanced(files: usize, workers: usize, most: usize) -> usize {
    let workers = workers.max(1);
    let most = most.max(1);
    let rounds = files.div_ceil(workers.saturating_mul(most)).max(1);
    let even = files
        .div_ceil(rounds.saturating_mul(workers))
        .clamp(1, most);
    if even < FEWEST && FEWEST <= most {
        FEWEST
    } else {
        even
    }
}

/// The fewest files a pass is given when there are more: each pass costs
/// its flushes, and one pass alone decodes on every core, so a recall of
/// a few files is one pass.
const FEWEST: usize = 64;

/// `rels` (by index) in passes of about `size` files and at most
/// [`PASS_BYTES`] (unless one file is larger), taken in `order`, with every name
/// of an inode (hard links, or a path given twice) in the pass of its
/// first name: passes run at once, and two passes must never fill one
/// inode together (a claim is a lock of the process, which both would
/// hold).
/// `stats[i]`, where known, is the stat of `rels[i]` (a regular file).
/// Also the inode each path was grouped by (`None`: not a regular file
/// then): a pass fills a path only if it still names that inode.
fn batches(
    root: &Path,
    rels: &[Vec<u8>],
    stats: &[Option<Stat>],
    order: &[usize],
    size: usize,
) -> (Vec<Vec<usize>>, Vec<Option<Inode>>) {
    let mut grouped_by = vec![None; rels.len()];
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0u64;
    let mut inodes: HashMap<(u64, u64), usize> = HashMap::new();
    for &i in order {
        let rel = &rels[i];
        let meta = match stats.get(i).copied().flatten() {
            Some(st) => Some((st.dev, st.ino, st.size)),
            None => std::fs::symlink_metadata(root.join(std::ffi::OsStr::from_bytes(rel)))
                .ok()
                .filter(|m| m.is_file())
                .map(|m| (m.dev(), m.ino(), m.len())),
        };
        let linked = meta.map(|(dev, ino, _)| (dev, ino));
        grouped_by[i] = linked;
        if let Some(inode) = linked
            && let Some(&b) = inodes.get(&inode)
        {
            batches[b].push(i);
            continue;
        }
        let len = meta.map_or(0, |(_, _, len)| len);
        if batches
            .last()
            .is_none_or(|b| b.len() >= size || (!b.is_empty() && bytes + len > PASS_BYTES))
        {
            batches.push(Vec::with_capacity(size));
            bytes = 0;
        }
        let b = batches.len() - 1;
        batches[b].push(i);
        bytes += len;
        if let Some(inode) = linked {
            inodes.insert(inode, b);
        }
    }
    (batches, grouped_by)
}

/// A file's device and inode numbers.
type Inode = (u64, u64);

/// Files recalled in one pass at most: each is held open (and claimed)
/// until the pass ends, which makes it durable with one flush per step.
pub const BATCH: usize = 4096;

/// Bytes a pass holds at most (one larger file makes a pass of its own):
/// a process that opens a file of the pass waits until the pass ends.
pub const PASS_BYTES: u64 = 1 << 30;

/// A stub opened for a recall. Its claim, if taken, goes with it: closing
/// the file drops this process's record locks on it (one system call per
/// file fewer than unlocking first).
struct Opened {
    at: usize,
    /// The inode opened.
    inode: Inode,
    file: File,
}

/// One pass of [`recall_paths`]: its paths opened and claimed, and the
/// recall of the stubs among them.
struct PathPass {
    out: Vec<Option<PathRecall>>,
    opened: Vec<Opened>,
    /// The stubs to fill: (index in `opened`, stub record).
    todo: Vec<(usize, StubRecord)>,
    recall: StubPass,
}

impl PathPass {
    /// Opens and claims the paths `batch` names (indices into `rels`), and
    /// marks the stubs among them as being recalled (not durable yet).
    /// `grouped_by[r]`: the inode `rels[r]` was put in its pass by.
    fn open(
        recaller: &Recaller,
        tree: &crate::source_tree::SourceTree,
        root: &Path,
        rels: &[Vec<u8>],
        grouped_by: &[Option<Inode>],
        stats: &[Option<Stat>],
        batch: &[usize],
    ) -> Result<PathPass> {
        let mut out: Vec<Option<PathRecall>> = batch.iter().map(|_| None).collect();
        let mut opened = Vec::new();
        for (at, &r) in batch.iter().enumerate() {
            let rel = &rels[r];
            let abs = || root.join(std::ffi::OsStr::from_bytes(rel));
            let (handle, inode) = match open_path_in(tree, rel) {
                Ok(found) => found,
                // Listed as a file when the recall began, and gone since
                // (its name removed, or taken by another kind of entry):
                // the other files are recalled all the same.
                Err(e) if grouped_by[r].is_some() && vanished(&e) => {
                    out[at] = Some(PathRecall::Gone);
                    continue;
                }
                // Nothing is opened through a link: this path is refused,
                // the others are recalled.
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    out[at] = Some(PathRecall::Failed(RecallFailure::Refused(format!(
                        "a symbolic link is on its way beneath the tree ({e}): not followed"
                    ))));
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    out[at] = Some(PathRecall::Failed(RecallFailure::Refused(format!(
                        "its way leaves the tree ({e})"
                    ))));
                    continue;
                }
                Err(e) => return Err(Error::io("cannot open", abs(), e)),
            };
            if grouped_by[r] != Some(inode) {
                // Another file took its name since the passes were made:
                // its other names may be in another pass, which would
                // fill it at the same time.
                out[at] = Some(PathRecall::Failed(RecallFailure::Unavailable(
                    "another file took its name while the recall began; try again".into(),
                )));
                continue;
            }
            // A path named by the caller may be a resident file, which is
            // not opened for writing. One the walk listed was a stub a
            // moment ago: its record is read once it is opened and claimed
            // (reading it through the handle too took 0.14 s of CPU in a
            // recall of 20,000 stubs); filled by then, it was filled on
            // open (by a fault-in handler, or another recall).
            let listed = stats.get(r).is_some_and(Option::is_some);
            if !listed {
                match stub::read_handle(handle.as_fd())
                    .map_err(|e| Error::io("cannot read the stub record of", abs(), e))?
                {
                    StubAttr::None => {
                        out[at] = Some(PathRecall::Resident);
                        continue;
                    }
                    StubAttr::Damaged(why) => {
                        out[at] = Some(PathRecall::Failed(RecallFailure::Refused(format!(
                            "its stub record is damaged: {why}"
                        ))));
                        continue;
                    }
                    StubAttr::Stub(_) => {}
                }
            }
            let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(&proc)
            {
                Ok(file) => opened.push(Opened { at, inode, file }),
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    out[at] = Some(PathRecall::Failed(RecallFailure::Unavailable(
                        "the fault-in handler watching this file could not recall it (its log says why)"
                            .into(),
                    )));
                }
                // A listed stub filled since (resident now) can be in use in
                // ways that refuse an open for writing.
                Err(_)
                    if listed
                        && matches!(stub::read_handle(handle.as_fd()), Ok(StubAttr::None)) =>
                {
                    out[at] = Some(PathRecall::FilledOnOpen);
                }
                // Another process holds a lease on it, or runs it.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EWOULDBLOCK | libc::ETXTBSY)) => {
                    out[at] = Some(PathRecall::Failed(RecallFailure::Unavailable(format!(
                        "another process holds it ({e}); try again"
                    ))));
                }
                Err(e) => return Err(Error::io("cannot open", abs(), e)),
            }
        }
        let mut todo: Vec<(usize, StubRecord)> = Vec::new();
        for (k, o) in opened.iter_mut().enumerate() {
            match stub::claim(&o.file).map_err(|e| Error::io("cannot claim", root, e))? {
                Some(claim) => claim.keep(),
                None => {
                    out[o.at] = Some(PathRecall::Failed(RecallFailure::Unavailable(
                        "another process is releasing or recalling it; try again".into(),
                    )));
                    continue;
                }
            }
            match stub::read_record(o.file.as_fd())
                .map_err(|e| Error::io("cannot read the stub record of", root, e))?
            {
                StubAttr::None => out[o.at] = Some(PathRecall::FilledOnOpen),
                StubAttr::Damaged(why) => {
                    out[o.at] = Some(PathRecall::Failed(RecallFailure::Refused(format!(
                        "its stub record is damaged: {why}"
                    ))))
                }
                StubAttr::Stub(r) => todo.push((k, r)),
            }
        }
        let pairs: Vec<(&File, &StubRecord)> =
            todo.iter().map(|(k, r)| (&opened[*k].file, r)).collect();
        let inodes: Vec<Inode> = todo.iter().map(|(k, _)| opened[*k].inode).collect();
        let recall = recaller.mark(&pairs, Some(&inodes));
        Ok(PathPass {
            out,
            opened,
            todo,
            recall,
        })
    }

    fn stubs(&self) -> Vec<(&File, &StubRecord)> {
        self.todo
            .iter()
            .map(|(k, r)| (&self.opened[*k].file, r))
            .collect()
    }

    /// Fills the pass once its marks are durable (see [`Recaller::fill`]).
    fn fill(
        &mut self,
        recaller: &Recaller,
        unmarked: Option<&std::io::Error>,
        decode_threads: Option<usize>,
    ) {
        let stubs: Vec<(&File, &StubRecord)> = self
            .todo
            .iter()
            .map(|(k, r)| (&self.opened[*k].file, r))
            .collect();
        recaller.fill(&stubs, &mut self.recall, unmarked, decode_threads);
    }

    /// Ends the pass once its cleared records are durable: its journal
    /// entries, its claims dropped, one outcome per path.
    fn close(self, recaller: &Recaller, uncleared: Option<&std::io::Error>) -> Vec<PathRecall> {
        let PathPass {
            mut out,
            opened,
            todo,
            recall,
        } = self;
        let stubs: Vec<(&File, &StubRecord)> =
            todo.iter().map(|(k, r)| (&opened[*k].file, r)).collect();
        let results = recaller.close(&stubs, recall, uncleared);
        for ((k, _), r) in todo.iter().zip(results) {
            out[opened[*k].at] = Some(match r {
                Ok(done) => PathRecall::Recalled(done),
                Err(f) => PathRecall::Failed(f),
            });
        }
        drop(stubs);
        drop(opened);
        out.into_iter()
            .map(|o| o.expect("a result per path"))
            .collect()
    }
}

/// Whether opening a path that named a file failed because the file is no
/// longer there under that name: the name, or a folder on its way, is
/// gone, or the name is now another kind of entry ([`open_path_in`]).
fn vanished(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
        || e.get_ref().is_some_and(|inner| inner.is::<NotAFile>())
}

/// What [`open_path_in`] says of a path that is not a regular file.
#[derive(Debug)]
struct NotAFile;

impl std::fmt::Display for NotAFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a regular file")
    }
}

impl std::error::Error for NotAFile {}

/// [`open_path`] through a tree opened once.
/// With the inode (device, number) opened.
fn open_path_in(
    tree: &crate::source_tree::SourceTree,
    rel: &[u8],
) -> std::io::Result<(std::os::fd::OwnedFd, Inode)> {
    let fd = tree.open_path_beneath(rel)?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            NotAFile,
        ));
    }
    Ok((fd, (st.st_dev, st.st_ino)))
}

/// Opens `rel` beneath `root` as a path only (no open of the file itself:
/// no fault-in event), refusing symbolic links on the way, and checks it
/// is a regular file.
pub(crate) fn open_path(root: &Path, rel: &[u8]) -> std::io::Result<(std::os::fd::OwnedFd, Stat)> {
    let tree = crate::source_tree::SourceTree::open(root)?;
    let fd = tree.open_path_beneath(rel)?;
    let st = Stat::from_metadata(&File::from(fd.try_clone()?).metadata()?);
    if !st.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((fd, st))
}

#[cfg(test)]
mod tests {
    use super::{balanced, batches, in_place_order};
    use crate::hsm::{RecallTarget, StoredAt};
    use crate::scan::Stat;
    use cbfs_format::{MemberId, SegmentId};

    fn stat(ino: u64, size: u64) -> Stat {
        Stat {
            dev: 1,
            ino,
            mode: 0o100_644,
            nlink: 1,
            uid: 0,
            gid: 0,
            size,
            mtime: 0,
            mtime_ns: 0,
            ctime: 0,
            ctime_ns: 0,
            rdev: 0,
        }
    }

    #[test]
    fn a_recall_takes_its_files_in_the_order_the_store_holds_them() {
        let seg = |b| SegmentId::from_bytes([b; 16]);
        let member = |b| MemberId::from_bytes([b; 16]);
        let target = |name: &str, stored: Option<(u64, u8, u8, u16)>| RecallTarget {
            rel: name.as_bytes().to_vec(),
            stat: None,
            stored: stored.map(|(sequence, s, m, slot)| StoredAt {
                sequence,
                segment: seg(s),
                member: member(m),
                slot,
            }),
        };
        let targets = vec![
            target("named", None),
            target("late", Some((2, 1, 1, 0))),
            target("far", Some((1, 1, 1, 0))),
            target("near-slot-1", Some((1, 1, 2, 1))),
            target("near-slot-0", Some((1, 1, 2, 0))),
            target("other-segment", Some((1, 2, 3, 0))),
            target("unplaced", Some((1, 1, 4, 0))),
            target("also-named", None),
            target("unplaced-too", Some((1, 1, 0, 0))),
        ];
        // Member 2 is stored before member 1 in segment 1; members 4 and 0
        // are not in its segment's summary (they stay in the order listed).
        let order = in_place_order(&targets, |s| match s.member.as_bytes()[0] {
            1 => Some(9_000),
            2 => Some(512),
            3 => Some(0),
            _ => None,
        });
        let names: Vec<&str> = order
            .iter()
            .map(|&i| std::str::from_utf8(&targets[i].rel).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "near-slot-0",
                "near-slot-1",
                "far",
                "unplaced",
                "unplaced-too",
                "other-segment",
                "late",
                "named",
                "also-named"
            ]
        );
    }

    #[test]
    fn passes_follow_the_order_and_keep_the_names_of_an_inode_together() {
        let rels: Vec<Vec<u8>> = (0..6).map(|i| format!("f{i}").into_bytes()).collect();
        // f1 and f4 are one inode.
        let stats: Vec<Option<Stat>> = [10, 11, 12, 13, 11, 15]
            .into_iter()
            .map(|ino| Some(stat(ino, 100)))
            .collect();
        let order = [5, 4, 3, 2, 1, 0];
        let (passes, grouped_by) = batches(std::path::Path::new("/"), &rels, &stats, &order, 2);
        assert_eq!(passes, vec![vec![5, 4, 1], vec![3, 2], vec![0]]);
        assert_eq!(grouped_by[1], Some((1, 11)));
        assert_eq!(grouped_by[4], Some((1, 11)));
    }

    #[test]
    fn passes_make_whole_rounds_of_the_workers() {
        // 20,000 files, four workers, 2,468 at most: three rounds of four
        // passes of 1,667 (the last 1,663), not eight full passes and a
        // ninth alone.
        assert_eq!(balanced(20_000, 4, 2_468), 1_667);
        assert_eq!(balanced(20_000, 4, 4_096), 2_500);
        assert_eq!(balanced(1_000, 4, 4_096), 250);
        // A few files: passes of 64 (fewer passes than workers).
        assert_eq!(balanced(100, 4, 4_096), 64);
        assert_eq!(balanced(5, 4, 4_096), 64);
        assert_eq!(balanced(0, 4, 4_096), 64);
        // Below 64 at most (few descriptors): whole rounds all the same.
        assert_eq!(balanced(200, 4, 18), 17);
        assert_eq!(balanced(200, 8, 16), 13);
        // Never above the most, never empty, no overflow.
        assert_eq!(balanced(1_000_000, 8, 16), 16);
        assert_eq!(balanced(10, 0, 0), 1);
        assert_eq!(balanced(usize::MAX, usize::MAX, usize::MAX), 64);
        assert_eq!(balanced(usize::MAX, 1, usize::MAX), usize::MAX);
        for files in [1, 7, 97, 200, 1_000, 20_000, 123_457] {
            for workers in 1..=8 {
                for most in [1, 9, 17, 63, 64, 80, 100, 300, 1_234, 4_096] {
                    let size = balanced(files, workers, most);
                    let passes = files.div_ceil(size);
                    let fewest = files.div_ceil(workers * most).max(1);
                    let what = format!(
                        "{files} files, {workers} workers, at most {most}: {passes} passes of {size}"
                    );
                    assert!((1..=most).contains(&size), "{what}");
                    // As few rounds as passes of the most would take.
                    assert_eq!(passes.div_ceil(workers).max(1), fewest, "{what}");
                    let raised = size == super::FEWEST
                        && most >= super::FEWEST
                        && files.div_ceil(fewest * workers) < super::FEWEST;
                    if !raised && size > 1 {
                        // Passes as small as fit in those rounds: one
                        // file fewer each would take a round more.
                        assert!(files.div_ceil(size - 1) > fewest * workers, "{what}");
                    }
                }
            }
        }
    }
}
