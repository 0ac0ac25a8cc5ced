//! The fault-in handler: reads the group's events and fills released
//! files before the process that opened or read them goes on.
//!
//! One thread reads events (straight into the shared journal, see
//! [`SharedJournal`]) and answers at once what needs no recall: a resident
//! file (allowed, and an ignore mark keeps its later accesses away from
//! the handler until it is modified or evicted), and the reads and writes
//! of a process that claims a stub (a release or recall at work). A stub's events go to worker threads, one recall per inode
//! however many processes wait on it: each waiter is allowed once the
//! content is back and verified, or denied with `EIO` (never zeros). The
//! handler does no other I/O on the watched file systems than through the
//! events' own descriptors (which raise no events): the store, spool and
//! index must live elsewhere.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use cbfs_format::StubRecord;

use crate::hsm::stub::{self, StubAttr};
use crate::hsm::{RecallFailure, Recaller};

use super::sys::{self, Group, SharedJournal};

/// The free slots of the shared journal.
struct Slots {
    free: Mutex<Vec<usize>>,
    freed: Condvar,
}

impl Slots {
    fn new() -> Self {
        Slots {
            free: Mutex::new((0..sys::SLOTS).rev().collect()),
            freed: Condvar::new(),
        }
    }
    fn take(&self) -> usize {
        let mut free = self.free.lock().expect("slots");
        loop {
            if let Some(i) = free.pop() {
                return i;
            }
            free = self.freed.wait(free).expect("slots");
        }
    }
    fn give(&self, i: usize) {
        self.free.lock().expect("slots").push(i);
        self.freed.notify_one();
    }
}

/// An event held until it is answered.
struct Held {
    fd: OwnedFd,
    slot: usize,
}

/// A recall waiting for a worker, with the events it will answer.
struct Job {
    key: (u64, u64),
    record: StubRecord,
}

/// What the handler shares between its threads.
struct Shared {
    group: Arc<Group>,
    journal: Arc<SharedJournal>,
    slots: Slots,
    recallers: Vec<Arc<Recaller>>,
    /// Events per inode being recalled: the first one's descriptor is the
    /// one filled through.
    waiting: Mutex<HashMap<(u64, u64), Vec<Held>>>,
    /// The last failed recall per inode, for callers that only saw `EIO`.
    failures: Mutex<HashMap<(u64, u64), RecallFailure>>,
    stats: Mutex<Stats>,
}

/// What the handler has done so far.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    /// Events read.
    pub events: u64,
    /// Files recalled.
    pub recalled: u64,
    /// Recalls that failed (their readers got `EIO`).
    pub failed: u64,
    /// Bytes filled back.
    pub bytes: u64,
}

/// A running handler.
pub struct Handler {
    shared: Arc<Shared>,
}

impl Handler {
    /// Starts the handler on `group` (whose marks the caller set), with
    /// `journal` shared with the guard, `workers` recall threads, and one
    /// recaller per file system (chosen by the stub record's file system
    /// name).
    pub fn start(
        group: Arc<Group>,
        journal: Arc<SharedJournal>,
        recallers: Vec<Arc<Recaller>>,
        workers: usize,
    ) -> Handler {
        let shared = Arc::new(Shared {
            group,
            journal,
            slots: Slots::new(),
            recallers,
            waiting: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            stats: Mutex::new(Stats::default()),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let (shared, rx) = (shared.clone(), rx.clone());
            std::thread::Builder::new()
                .name(format!("fault-in-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock().expect("jobs").recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        };
                        recall(&shared, job);
                    }
                })
                .expect("a thread");
        }
        let reader = shared.clone();
        std::thread::Builder::new()
            .name("fault-in-events".into())
            .spawn(move || {
                if let Err(e) = read_loop(&reader, &tx) {
                    tracing::error!("the fault-in handler cannot read events: {e}; exiting so that the guard answers for it");
                    std::process::exit(70);
                }
            })
            .expect("a thread");
        Handler { shared }
    }

    /// What it has done so far.
    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().expect("stats").clone()
    }

    /// Why the last recall of this inode failed, if it did.
    pub fn failure(&self, dev: u64, ino: u64) -> Option<RecallFailure> {
        self.shared
            .failures
            .lock()
            .expect("failures")
            .get(&(dev, ino))
            .cloned()
    }

    /// Whether recalls are going on.
    pub fn busy(&self) -> bool {
        !self.shared.waiting.lock().expect("waiting").is_empty()
    }
}

fn read_loop(shared: &Arc<Shared>, jobs: &mpsc::Sender<Job>) -> std::io::Result<()> {
    loop {
        let bytes = shared.journal.read_events(&shared.group)?;
        let events = sys::events(&bytes);
        // Every event's descriptor is in a slot before the landing buffer
        // is cleared: a handler that dies now leaves each unanswered event
        // where the guard finds it.
        let mut held = Vec::with_capacity(events.len());
        for e in &events {
            if e.fd < 0 {
                continue;
            }
            let slot = shared.slots.take();
            shared.journal.hold(slot, e.fd);
            // SAFETY: `e.fd` is the descriptor of an event this thread just
            // read; nothing else owns it.
            #[allow(unsafe_code)]
            let fd = unsafe { sys::event_fd(e.fd) };
            held.push((*e, Held { fd, slot }));
        }
        shared.journal.clear_landing();
        shared.stats.lock().expect("stats").events += held.len() as u64;
        for (e, h) in held {
            dispatch(shared, e, h, jobs);
        }
    }
}

/// Answers an event and frees its slot.
/// Answers every event waiting on the file `key` (allow, or deny with
/// `EIO`).
fn answer_all(shared: &Shared, key: &(u64, u64), deny: bool) {
    let held = shared
        .waiting
        .lock()
        .expect("waiting")
        .remove(key)
        .unwrap_or_default();
    for h in held {
        answer(shared, h, deny);
    }
}

fn answer(shared: &Shared, h: Held, deny: bool) {
    let raw = h.fd.as_raw_fd();
    if let Err(e) = shared.group.respond(raw, deny.then_some(libc::EIO)) {
        tracing::error!("cannot answer a fault-in event: {e}");
    }
    shared.journal.answered(h.slot);
    shared.slots.give(h.slot);
    drop(h.fd);
}

/// Allows an event of a resident file, and keeps that file's later
/// accesses away from the handler: the ignore mark is added once the
/// event's descriptor is closed (the kernel does not keep one added while
/// it is open), through a path-only handle of the same inode, and before
/// the answer, so that the process that waits is never ahead of it.
fn allow_resident(shared: &Shared, h: Held) {
    let raw: RawFd = h.fd.as_raw_fd();
    let handle = File::options()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(format!("/proc/self/fd/{raw}"));
    let Held { fd, slot } = h;
    drop(fd);
    if let Ok(handle) = handle {
        let _ = shared
            .group
            .ignore_inode(Path::new(&format!("/proc/self/fd/{}", handle.as_raw_fd())));
    }
    // The number is answered after its descriptor closed: no other event
    // can have it meanwhile (only this thread reads events).
    if let Err(e) = shared.group.respond(raw, None) {
        tracing::error!("cannot answer a fault-in event: {e}");
    }
    shared.journal.answered(slot);
    shared.slots.give(slot);
}

use std::os::unix::fs::OpenOptionsExt;

fn dispatch(shared: &Arc<Shared>, e: sys::RawEvent, h: Held, jobs: &mpsc::Sender<Job>) {
    let file = File::from(match h.fd.try_clone() {
        Ok(f) => f,
        Err(err) => {
            tracing::error!("cannot use a fault-in event's descriptor: {err}");
            return answer(shared, h, true);
        }
    });
    let meta = match file.metadata() {
        Ok(m) if m.is_file() => m,
        Ok(_) => return answer(shared, h, false),
        Err(err) => {
            tracing::error!("cannot stat a fault-in event's file: {err}");
            return answer(shared, h, true);
        }
    };
    let key = (meta.dev(), meta.ino());
    let attr = stub::read_record(std::os::fd::AsFd::as_fd(&file));
    drop(file);
    let record = match attr {
        Ok(StubAttr::None) => return allow_resident(shared, h),
        Ok(StubAttr::Stub(r)) => r,
        Ok(StubAttr::Damaged(why)) => {
            tracing::error!(
                inode = key.1,
                "a stub record is damaged ({why}): access denied"
            );
            return answer(shared, h, true);
        }
        Err(err) => {
            tracing::error!(
                inode = key.1,
                "cannot read a stub record ({err}): access denied"
            );
            return answer(shared, h, true);
        }
    };
    // The process releasing or recalling it (its claim is in /proc/locks)
    // reads and writes it itself.
    if stub::claim_holder(e.pid, key.0, key.1) {
        return answer(shared, h, false);
    }
    let mut waiting = shared.waiting.lock().expect("waiting");
    if let Some(w) = waiting.get_mut(&key) {
        w.push(h);
        return;
    }
    waiting.insert(key, vec![h]);
    drop(waiting);
    let _ = jobs.send(Job { key, record });
}

fn recall(shared: &Shared, job: Job) {
    let started = Instant::now();
    // The first event's descriptor is the one filled through.
    let fd = {
        let waiting = shared.waiting.lock().expect("waiting");
        waiting
            .get(&job.key)
            .and_then(|w| w.first())
            .and_then(|h| h.fd.try_clone().ok())
    };
    let file = fd.map(File::from);
    // A release or recall in another process goes first; then only a
    // handler fills it. The claim is held until the waiters are answered.
    let claim = match &file {
        Some(f) => match stub::wait_claim(f) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(
                    path = %String::from_utf8_lossy(&job.record.path),
                    "cannot claim a stub to fill it ({e}): its readers get EIO"
                );
                answer_all(shared, &job.key, true);
                return;
            }
        },
        None => None,
    };
    // Filled already (by the recall this event came in behind): nothing to do.
    if let Some(f) = &file
        && matches!(
            stub::read_record(std::os::fd::AsFd::as_fd(f)),
            Ok(StubAttr::None)
        )
    {
        drop(claim);
        answer_all(shared, &job.key, false);
        return;
    }
    let outcome = match (
        &file,
        shared.recallers.iter().find(|r| r.fs() == job.record.fs),
    ) {
        (None, _) => Err(RecallFailure::Refused(
            "the event's descriptor is gone".into(),
        )),
        (_, None) => Err(RecallFailure::Refused(format!(
            "no file system `{}` is served here",
            job.record.fs
        ))),
        (Some(f), Some(r)) => r.recall_file(f, &job.record),
    };
    let path = String::from_utf8_lossy(&job.record.path).into_owned();
    {
        let mut stats = shared.stats.lock().expect("stats");
        match &outcome {
            Ok(done) => {
                stats.recalled += 1;
                stats.bytes += done.bytes;
                tracing::info!(
                    %path,
                    bytes = done.bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "recalled on first access"
                );
            }
            Err(f) => {
                stats.failed += 1;
                tracing::error!(%path, "recall failed, readers get EIO: {f}");
            }
        }
    }
    {
        let mut failures = shared.failures.lock().expect("failures");
        if failures.len() > 10_000 {
            failures.clear();
        }
        match &outcome {
            Ok(_) => failures.remove(&job.key),
            Err(f) => failures.insert(job.key, f.clone()),
        };
    }
    drop(claim);
    answer_all(shared, &job.key, outcome.is_err());
}
