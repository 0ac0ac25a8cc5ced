//! The batches of entries between the scan and the workers.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};

use super::{Shared, Work};

/// Batches waiting for the workers, at most.
const QUEUED_BATCHES: usize = 64;

/// Batches of entries to store, between the scan and the workers. The
/// scan waits while it is full; a worker takes a whole batch at a time
/// (one wake-up per batch, not per file).
#[derive(Default)]
pub(crate) struct WorkQueue {
    state: Mutex<QueueState>,
    changed: Condvar,
}

#[derive(Default)]
struct QueueState {
    batches: VecDeque<Vec<Work>>,
    closed: bool,
}

/// Closes the queue when dropped (also while unwinding from a panic), and
/// then stops the run if a panic is the reason.
pub(crate) struct CloseOnDrop<'a>(pub &'a Shared<'a>, pub &'a WorkQueue);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop.store(true, Ordering::SeqCst);
        }
        self.1.close();
    }
}

impl WorkQueue {
    /// Adds a batch; waits while the queue is full (unless it was closed).
    pub(crate) fn push(&self, batch: Vec<Work>) {
        let mut st = self.state.lock().expect("work queue");
        while st.batches.len() >= QUEUED_BATCHES && !st.closed {
            st = self.changed.wait(st).expect("work queue");
        }
        if !st.closed {
            st.batches.push_back(batch);
        }
        drop(st);
        self.changed.notify_all();
    }

    /// No more batches: the workers finish what is queued and stop.
    pub(crate) fn close(&self) {
        self.state.lock().expect("work queue").closed = true;
        self.changed.notify_all();
    }

    /// The next batch, waiting for one; `None` once closed and empty.
    pub(crate) fn take(&self) -> Option<Vec<Work>> {
        let mut st = self.state.lock().expect("work queue");
        loop {
            if let Some(batch) = st.batches.pop_front() {
                drop(st);
                self.changed.notify_all();
                return Some(batch);
            }
            if st.closed {
                return None;
            }
            st = self.changed.wait(st).expect("work queue");
        }
    }
}
