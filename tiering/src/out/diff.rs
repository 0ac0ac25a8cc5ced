//! The walk against the index: what changed goes to the workers as the walk
//! finds it, and what is gone is found by a cursor over the index's paths
//! that moves along with the walk (both are in path byte order).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use crate::error::Result;
use crate::index::FileRecord;
use crate::scan::{self, Stat, Walked};

use super::queue::{CloseOnDrop, WorkQueue};
use super::{ChangeTest, OutOptions, OutReport, Shared, Work, worker};

/// Entries the walk hands over at a time.
const WALK_BATCH: usize = 512;
/// A batch for the workers holds at most this many entries, or this much
/// content (one file may exceed it).
const QUEUE_BATCH_FILES: usize = 64;
const QUEUE_BATCH_BYTES: u64 = 4 << 20;

/// Walks the tree and stores every new or changed entry. Returns the
/// indexed paths that are gone from the tree.
pub(crate) fn store_changes(shared: &Shared<'_>, report: &mut OutReport) -> Result<Vec<Vec<u8>>> {
    let opts = shared.opts;
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    };
    let (batches, received) = mpsc::sync_channel::<Vec<Walked>>(16);
    let source = &opts.source;
    let tree = shared
        .tree
        .as_ref()
        .ok_or_else(|| crate::error::Error::Usage("no source tree to walk".into()))?;
    let mut walk = Walk::new(shared);
    let queue = WorkQueue::default();
    let stored = std::thread::scope(|s| {
        // However the scan ends (a panic included), the workers are told.
        let _closing = CloseOnDrop(shared, &queue);
        let walkers = opts.workers.clamp(1, 4);
        s.spawn(move || {
            scan::walk_parallel(tree, source, walkers, WALK_BATCH, |items| {
                let _ = batches.send(items);
            });
        });
        let mut dispatch = Dispatch::new(s, shared, &queue);
        for items in received {
            if cancelled() {
                shared.stop.store(true, Ordering::SeqCst);
            }
            if walk.error.is_some() || shared.stop.load(Ordering::SeqCst) {
                continue;
            }
            match walk.batch(items, report) {
                Ok(changed) => dispatch.hand_over(changed),
                Err(e) => {
                    walk.error = Some(e);
                    shared.stop.store(true, Ordering::SeqCst);
                }
            }
        }
        dispatch.finish()
    });
    if let Some(e) = walk.error {
        return Err(e);
    }
    stored?;
    // A run that stopped early has not seen the whole tree: nothing can be
    // called gone. What it committed stays; the next run finishes.
    if shared.stop.load(Ordering::SeqCst) {
        return Err(if cancelled() {
            crate::error::Error::Cancelled
        } else {
            crate::error::Error::Usage("the run stopped early".into())
        });
    }
    let Walk {
        mut cursor,
        mut gone,
        keep_below,
        ..
    } = walk;
    cursor.rest(|path| {
        if !keep_below.iter().any(|k| path.starts_with(k)) {
            gone.push(path.to_vec());
        }
    })?;
    Ok(gone)
}

/// The walk's side of a run: the index cursor that moves along with it
/// (both are in path byte order) and what it has found so far.
struct Walk<'s, 'r> {
    shared: &'s Shared<'r>,
    cursor: crate::index::PathCursor<'s>,
    /// The first name of each multiply linked inode, per scope: a link
    /// group that crosses scopes is stored as one file per scope, so that
    /// no name of one scope is written into another's metadata.
    first_link: HashMap<(u64, u64, cbfs_core::ScopeLabel), Vec<u8>>,
    /// Indexed paths gone from the tree.
    gone: Vec<Vec<u8>>,
    /// A directory that cannot be listed keeps everything below it: the
    /// prefixes `dir/` whose region the walk has not passed yet.
    keep_below: Vec<Vec<u8>>,
    error: Option<crate::error::Error>,
}

impl<'s, 'r> Walk<'s, 'r> {
    fn new(shared: &'s Shared<'r>) -> Self {
        Walk {
            shared,
            cursor: shared
                .agent
                .index
                .paths_cursor_below(shared.opts.prefix.as_deref()),
            first_link: HashMap::new(),
            gone: Vec::new(),
            keep_below: Vec::new(),
            error: None,
        }
    }

    /// The walk's paths are relative to the tree; in the index they carry
    /// the prefix.
    fn named(&self, rel: Vec<u8>) -> Vec<u8> {
        match &self.shared.opts.prefix {
            None => rel,
            Some(p) => {
                let mut full = Vec::with_capacity(p.len() + 1 + rel.len());
                full.extend_from_slice(p);
                full.push(b'/');
                full.extend_from_slice(&rel);
                full
            }
        }
    }

    /// One batch of the walk against the index: what changed (stubs and
    /// flagged files taken out), with what is gone noted on the way.
    fn batch(&mut self, mut items: Vec<Walked>, report: &mut OutReport) -> Result<Vec<Work>> {
        let shared = self.shared;
        if shared.opts.prefix.is_some() {
            for item in &mut items {
                match item {
                    Walked::Entry(e) => e.rel = self.named(std::mem::take(&mut e.rel)),
                    Walked::Problem(p) => p.rel = p.rel.take().map(|r| self.named(r)),
                }
            }
        }
        let paths: Vec<&[u8]> = items
            .iter()
            .filter_map(|w| match w {
                Walked::Entry(e) => Some(e.rel.as_slice()),
                Walked::Problem(_) => None,
            })
            .collect();
        let mut records = shared.agent.index.files(&paths)?.into_iter();
        let mut changed = Vec::new();
        // In walk order: the cursor must not pass an entry before its turn.
        for item in items {
            let (rel, entry) = match item {
                Walked::Entry(e) => (e.rel.clone(), Some(e)),
                Walked::Problem(p) => {
                    let rel = p.rel.clone();
                    shared.problems.lock().expect("problems lock").push(p);
                    // What it is about is kept as the index has it.
                    let Some(rel) = rel else { continue };
                    (rel, None)
                }
            };
            let (gone, keep_below) = (&mut self.gone, &self.keep_below);
            self.cursor.advance_to(&rel, |path| {
                if !keep_below.iter().any(|k| path.starts_with(k)) {
                    gone.push(path.to_vec());
                }
            })?;
            // Past a kept region: nothing below that prefix comes any more.
            self.keep_below
                .retain(|k| rel.starts_with(k) || rel.as_slice() < k.as_slice());
            let Some(entry) = entry else {
                let mut below = rel;
                below.push(b'/');
                self.keep_below.push(below);
                continue;
            };
            let stored = records.next().expect("a record per entry");
            report.scanned += 1;
            if let Some(work) = self.compare(entry, stored.as_ref()) {
                changed.push(work);
            } else {
                report.unchanged += 1;
            }
        }
        // Stubs are never archived; flagged files stay out.
        super::stubs::screen(shared, changed, report)
    }

    /// The entry as work to store, or `None` if the index holds it as it is.
    fn compare(&mut self, entry: scan::Entry, stored: Option<&FileRecord>) -> Option<Work> {
        let opts = self.shared.opts;
        let st = entry.stat;
        let scope = if st.file_type() == libc::S_IFDIR {
            opts.rules.scope_of_dir(&entry.rel)
        } else {
            opts.rules.scope_of(&entry.rel)
        };
        let hardlink_to = if st.nlink > 1 && st.file_type() != libc::S_IFDIR {
            match self.first_link.get(&(st.dev, st.ino, scope.clone())) {
                Some(first) => Some(first.clone()),
                None => {
                    self.first_link
                        .insert((st.dev, st.ino, scope.clone()), entry.rel.clone());
                    None
                }
            }
        } else {
            None
        };
        if unchanged(opts, stored, &st, &scope, hardlink_to.as_deref()) {
            return None;
        }
        Some(Work {
            entry,
            scope,
            hardlink_to,
            reseal: None,
            pushed: None,
        })
    }
}

/// Whether an entry is what the index holds of its path: then it is not
/// stored again.
pub(crate) fn unchanged(
    opts: &OutOptions,
    stored: Option<&FileRecord>,
    stat: &Stat,
    scope: &cbfs_core::ScopeLabel,
    hardlink_to: Option<&[u8]>,
) -> bool {
    let Some(rec) = stored else {
        return false;
    };
    let same = match opts.change_test {
        ChangeTest::Inode => rec.stat.same_version(stat),
        ChangeTest::Attributes => rec.stat.same_attributes(stat),
    };
    same && rec.scope == scope.as_str() && rec.hardlink_to.as_deref() == hardlink_to
}

/// Hands changed entries to the workers in small batches, and adds
/// workers as changed content accumulates: one per 8 MiB, up to the run's
/// number. Each worker fills a segment of its own, and a small incremental
/// run is better off with one segment (one summary, one lockbox per scope)
/// than with a few almost empty ones.
pub(crate) struct Dispatch<'scope, 'env, 'run> {
    s: &'scope std::thread::Scope<'scope, 'env>,
    shared: &'env Shared<'run>,
    queue: &'env WorkQueue,
    queued_bytes: u64,
    workers: Vec<std::thread::ScopedJoinHandle<'scope, Result<()>>>,
}

impl<'scope, 'env, 'run> Dispatch<'scope, 'env, 'run> {
    pub(crate) fn new(
        s: &'scope std::thread::Scope<'scope, 'env>,
        shared: &'env Shared<'run>,
        queue: &'env WorkQueue,
    ) -> Self {
        Dispatch {
            s,
            shared,
            queue,
            queued_bytes: 0,
            workers: Vec::new(),
        }
    }

    /// Queues `changed`, starting workers as needed.
    pub(crate) fn hand_over(&mut self, changed: Vec<Work>) {
        if changed.is_empty() {
            return;
        }
        let shared = self.shared;
        let bytes: u64 = changed.iter().map(Work::content_len).sum();
        self.queued_bytes += bytes;
        shared.observer.work_found(changed.len() as u64, bytes);
        let wanted = usize::try_from(self.queued_bytes.div_ceil(8 << 20))
            .unwrap_or(usize::MAX)
            .clamp(1, shared.opts.workers.clamp(1, 16));
        while self.workers.len() < wanted {
            let queue = self.queue;
            self.workers.push(self.s.spawn(move || {
                // A worker that fails or panics stops the run: the scan
                // must not wait on a queue nobody empties.
                let closing = CloseOnDrop(shared, queue);
                let result = worker::worker(shared, queue);
                if result.is_err() {
                    shared.stop.store(true, Ordering::SeqCst);
                } else {
                    std::mem::forget(closing);
                }
                result
            }));
        }
        // Handed over in small batches, so that the workers share a walk
        // batch of large files between them.
        let mut part = Vec::new();
        let mut part_bytes = 0;
        for w in changed {
            part_bytes += w.content_len();
            part.push(w);
            if part.len() >= QUEUE_BATCH_FILES || part_bytes >= QUEUE_BATCH_BYTES {
                self.queue.push(std::mem::take(&mut part));
                part_bytes = 0;
            }
        }
        if !part.is_empty() {
            self.queue.push(part);
        }
    }

    /// No more work: waits for the workers, and gives the first failure.
    pub(crate) fn finish(self) -> Result<()> {
        self.queue.close();
        let mut stored = Ok(());
        for w in self.workers {
            let r = w.join().expect("worker thread panicked");
            if stored.is_ok() {
                stored = r;
            }
        }
        stored
    }
}
