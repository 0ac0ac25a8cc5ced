//! Tier-out runs and pushes as durable jobs: one record per job in
//! `STATE/jobs/<id>.json`, written atomically at every change of state. A
//! job that was running when the gateway died is reported as interrupted
//! when it starts again; the agent's next run of that file system finishes
//! the snapshot it had begun (its index says so).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cbfs_tiering::{Observer, OutReport};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A tier-out run of the file system's source tree.
    TierOut,
    /// A pushed tree, tiered out under a prefix.
    Push,
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Waiting for the file system's agent.
    Queued,
    /// Running.
    Running,
    /// Done: a snapshot was made, or nothing had changed.
    Succeeded,
    /// Failed; see `error`.
    Failed,
    /// Stopped at a safe point when asked (or when the gateway stopped).
    Cancelled,
    /// The gateway died while it ran; the next run finishes its snapshot.
    Interrupted,
}

impl State {
    /// Whether the job will not change any more.
    pub fn is_final(self) -> bool {
        !matches!(self, State::Queued | State::Running)
    }
}

/// How far a job got.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    /// Entries found to store.
    pub files_found: u64,
    /// Their content bytes.
    pub bytes_found: u64,
    /// Entries stored.
    pub files_stored: u64,
    /// Content bytes read.
    pub bytes_read: u64,
    /// Segments stored.
    pub segments: u64,
    /// Bytes received (a push).
    pub bytes_received: u64,
}

/// A job's record, as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Its id (16 random bytes, hex).
    pub id: String,
    /// The file system.
    pub fs: String,
    /// What it does.
    pub kind: Kind,
    /// For a push, the prefix.
    pub prefix: Option<String>,
    /// Who asked.
    pub requested_by: String,
    /// Where it is.
    pub state: State,
    /// When it was asked for, started, ended (RFC 3339).
    pub created: String,
    /// When it started.
    pub started: Option<String>,
    /// When it ended.
    pub ended: Option<String>,
    /// How far it got.
    pub progress: Progress,
    /// The run's report, when it ended well.
    pub report: Option<OutReport>,
    /// Why it failed.
    pub error: Option<String>,
}

fn now() -> String {
    cbfs_core::Clock::rfc3339(&cbfs_core::SystemClock)
}

/// A job in this process: its record, who waits for it, how to cancel it.
pub struct Job {
    record: Mutex<Record>,
    tx: watch::Sender<Record>,
    /// Set to stop the run at its next safe point.
    pub cancel: Arc<AtomicBool>,
    counters: Counters,
    dir: PathBuf,
}

#[derive(Default)]
struct Counters {
    files_found: AtomicU64,
    bytes_found: AtomicU64,
    files_stored: AtomicU64,
    bytes_read: AtomicU64,
    segments: AtomicU64,
    bytes_received: AtomicU64,
}

impl Job {
    /// The record now, progress included.
    pub fn record(&self) -> Record {
        let mut r = self.record.lock().expect("job record").clone();
        r.progress = self.progress();
        r
    }

    fn progress(&self) -> Progress {
        let c = &self.counters;
        Progress {
            files_found: c.files_found.load(Ordering::Relaxed),
            bytes_found: c.bytes_found.load(Ordering::Relaxed),
            files_stored: c.files_stored.load(Ordering::Relaxed),
            bytes_read: c.bytes_read.load(Ordering::Relaxed),
            segments: c.segments.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
        }
    }

    /// Waits until the job has ended, or `timeout` has passed; the record.
    pub async fn wait(&self, timeout: std::time::Duration) -> Record {
        let mut rx = self.tx.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|r| r.state.is_final())).await;
        self.record()
    }

    /// Moves the job to `state`, durably.
    pub fn set(
        &self,
        state: State,
        report: Option<OutReport>,
        error: Option<String>,
    ) -> Result<()> {
        let record = {
            let mut r = self.record.lock().expect("job record");
            r.state = state;
            if state == State::Running {
                r.started = Some(now());
            }
            if state.is_final() {
                r.ended = Some(now());
            }
            if report.is_some() {
                r.report = report;
            }
            if error.is_some() {
                r.error = error;
            }
            r.progress = self.progress();
            r.clone()
        };
        write_record(&self.dir, &record)?;
        self.tx.send_replace(record);
        Ok(())
    }

    /// Counts bytes received (a push).
    pub fn received(&self, n: u64) {
        self.counters.bytes_received.fetch_add(n, Ordering::Relaxed);
    }
}

impl Observer for Job {
    fn work_found(&self, files: u64, bytes: u64) {
        self.counters
            .files_found
            .fetch_add(files, Ordering::Relaxed);
        self.counters
            .bytes_found
            .fetch_add(bytes, Ordering::Relaxed);
    }
    fn bytes_read(&self, bytes: u64) {
        self.counters.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }
    fn file_stored(&self) {
        self.counters.files_stored.fetch_add(1, Ordering::Relaxed);
    }
    fn segment_stored(&self, _segment: &cbfs_format::SegmentId, _bytes: u64) {
        self.counters.segments.fetch_add(1, Ordering::Relaxed);
    }
}

fn write_record(dir: &Path, r: &Record) -> Result<()> {
    let path = dir.join(format!("{}.json", r.id));
    let tmp = dir.join(format!(".{}.json.tmp", r.id));
    let bytes = serde_json::to_vec_pretty(r).expect("records serialize");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| Error::io("cannot write the job record", &path, e))
}

/// Every job of this gateway, and the tier-out running per file system.
pub struct Jobs {
    dir: PathBuf,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    /// The tier-out job running (or queued) per file system: a second
    /// request joins it.
    tier_out: Mutex<HashMap<String, Arc<Job>>>,
}

impl Jobs {
    /// Opens the job records in `dir`; jobs that were running or queued
    /// when the gateway stopped are marked interrupted.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
        let jobs = Jobs {
            dir: dir.to_owned(),
            jobs: Mutex::new(HashMap::new()),
            tier_out: Mutex::new(HashMap::new()),
        };
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io("cannot read", dir, e))?;
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json")
                || path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(mut record) = serde_json::from_slice::<Record>(&bytes) else {
                tracing::warn!("ignoring job record {}: not readable", path.display());
                continue;
            };
            if !record.state.is_final() {
                record.state = State::Interrupted;
                record.ended = Some(now());
                record.error = Some(
                    "the gateway stopped while this job ran; the next run of the file system finishes its snapshot".into(),
                );
                write_record(dir, &record)?;
            }
            let job = jobs.wrap(record);
            jobs.jobs
                .lock()
                .expect("jobs")
                .insert(job.record().id.clone(), job);
        }
        Ok(jobs)
    }

    fn wrap(&self, record: Record) -> Arc<Job> {
        let (tx, _) = watch::channel(record.clone());
        Arc::new(Job {
            record: Mutex::new(record),
            tx,
            cancel: Arc::new(AtomicBool::new(false)),
            counters: Counters::default(),
            dir: self.dir.clone(),
        })
    }

    /// A new job, recorded as queued. For a tier-out, the one already
    /// running or queued for `fs` instead, if any (`false`: joined).
    pub fn start(
        &self,
        fs: &str,
        kind: Kind,
        prefix: Option<String>,
        who: &str,
    ) -> Result<(Arc<Job>, bool)> {
        let mut running = self.tier_out.lock().expect("tier-out jobs");
        if kind == Kind::TierOut
            && let Some(j) = running.get(fs)
            && !j.record().state.is_final()
        {
            return Ok((j.clone(), false));
        }
        let record = Record {
            id: hex::encode(rand::random::<[u8; 16]>()),
            fs: fs.to_owned(),
            kind,
            prefix,
            requested_by: who.to_owned(),
            state: State::Queued,
            created: now(),
            started: None,
            ended: None,
            progress: Progress::default(),
            report: None,
            error: None,
        };
        write_record(&self.dir, &record)?;
        let job = self.wrap(record);
        self.jobs
            .lock()
            .expect("jobs")
            .insert(job.record().id.clone(), job.clone());
        if kind == Kind::TierOut {
            running.insert(fs.to_owned(), job.clone());
        }
        Ok((job, true))
    }

    /// A job by id.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().expect("jobs").get(id).cloned()
    }

    /// The jobs of a file system, newest first.
    pub fn of(&self, fs: &str) -> Vec<Record> {
        let mut out: Vec<Record> = self
            .jobs
            .lock()
            .expect("jobs")
            .values()
            .map(|j| j.record())
            .filter(|r| r.fs == fs)
            .collect();
        out.sort_by(|a, b| b.created.cmp(&a.created));
        out
    }

    /// Every job not yet ended.
    pub fn active(&self) -> Vec<Arc<Job>> {
        self.jobs
            .lock()
            .expect("jobs")
            .values()
            .filter(|j| !j.record().state.is_final())
            .cloned()
            .collect()
    }
}
