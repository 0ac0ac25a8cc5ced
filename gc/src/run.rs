//! One run of the collector: phase two of the collections whose writers
//! have all moved on, then mark, compaction and phase one of what is newly
//! unneeded.

use std::path::PathBuf;

use cbfs_core::Keyset;
use cbfs_restore::{Pin, load_keyset};
use cbfs_store::{Store, StoreSource};
use serde::Serialize;
use tokio::runtime::Handle;

use crate::collect::{PlanOptions, SweepReport, plan, record, sweep, waiting_for};
use crate::compact::{CompactReport, compact};
use crate::crash::{CrashPoint, TestHooks, crash_points_enabled};
use crate::error::{Error, Result};
use crate::lease::Held;
use crate::mark::Mark;

/// How the collector trusts the keyset (it holds no key: it pins the
/// administrator's public key).
#[derive(Clone, Debug)]
pub enum Anchor {
    /// A keyset file the collector trusts: its administrator, and no older
    /// keyset of the store.
    KeysetFile(PathBuf),
    /// The administrator key's fingerprint.
    AdminKey(String),
}

/// What a run of the collector is asked to do.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// The store: a directory, or s3://BUCKET/PREFIX.
    pub store: String,
    /// How the keyset is trusted.
    pub anchor: Anchor,
    /// Segments younger than this (seconds) are never touched.
    pub grace: i64,
    /// A segment whose live share falls below this is compacted.
    pub min_live: f64,
    /// Writers seen within this many seconds must finish a run before
    /// phase two deletes anything.
    pub writer_window: i64,
    /// New segments close at this size.
    pub segment_size: u64,
    /// How long the lease lasts unless renewed (seconds).
    pub lease_ttl: i64,
    /// Decide and report only: no lease, no write, no deletion.
    pub dry_run: bool,
    /// Where new segments are spooled (default: the system's temporary
    /// directory): room for two segments, one published while the next
    /// fills.
    pub spool: Option<PathBuf>,
    /// Test builds only: die or wait at a point.
    pub hooks: TestHooks,
}

impl GcOptions {
    /// The defaults for `store`: a grace period of 24 hours, compaction
    /// below 50% live, a writer window of 7 days, 64 MiB segments, a lease
    /// of 10 minutes.
    pub fn new(store: impl Into<String>, anchor: Anchor) -> Self {
        GcOptions {
            store: store.into(),
            anchor,
            grace: 24 * 3600,
            min_live: 0.5,
            writer_window: 7 * 86_400,
            segment_size: 64 << 20,
            lease_ttl: 600,
            dry_run: false,
            spool: None,
            hooks: TestHooks::default(),
        }
    }
}

/// A note about one object.
#[derive(Clone, Debug, Serialize)]
pub struct Note {
    /// The object.
    pub object: String,
    /// What about it.
    pub note: String,
}

/// What phase one decided.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseOne {
    /// The collection record written (`None`: nothing to collect, or a dry run).
    pub collection: Option<String>,
    /// Segments no kept snapshot needs.
    pub dead_segments: u64,
    /// Segments no snapshot ever named (left by interrupted runs).
    pub unnamed_segments: u64,
    /// Segments compacted.
    pub compacted_segments: u64,
    /// Bytes those segments take (deleted by phase two).
    pub reclaimable_bytes: u64,
    /// Other objects to delete (forgotten manifests, stale records).
    pub objects: u64,
    /// Manifest bases written.
    pub bases_written: Vec<String>,
}

/// What a run of the collector did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Nothing was written or deleted.
    pub dry_run: bool,
    /// Snapshots kept (signed by trusted writers, not forgotten).
    pub snapshots_kept: u64,
    /// Forgotten snapshots whose manifests are still in the store.
    pub snapshots_forgotten: u64,
    /// Bytes of the segment objects in the store when the run began.
    pub segment_bytes_before: u64,
    /// Bytes of segment data the kept snapshots need.
    pub live_bytes: u64,
    /// Phase two, per pending collection record.
    pub phase_two: Vec<SweepReport>,
    /// Compaction.
    pub compaction: CompactReport,
    /// Phase one.
    pub phase_one: PhaseOne,
    /// Segments left alone: younger than the grace period.
    pub young_segments: u64,
    /// Segments left alone: an object that does not verify may need them.
    pub protected_segments: u64,
    /// What was noticed, by object.
    pub notes: Vec<Note>,
}

fn trusted_keyset(store: &Store, rt: &Handle, anchor: &Anchor) -> Result<Keyset> {
    let source = StoreSource::new(store.clone(), rt.clone());
    let pin = match anchor {
        Anchor::KeysetFile(path) => {
            Pin::Keyset(Box::new(Keyset::load(path).map_err(|e| {
                Error::Usage(format!("the keyset {}: {e}", path.display()))
            })?))
        }
        Anchor::AdminKey(fp) => Pin::Fingerprint(fp.clone()),
    };
    load_keyset(&source, &pin, None)
        .map_err(|e| Error::restore("the keyset could not be trusted", e))
}

/// Runs the collector once (from a thread that may block; store calls are
/// driven on `rt`).
pub fn run(opts: &GcOptions, rt: &Handle) -> Result<GcReport> {
    if opts.hooks.any() && !crash_points_enabled() {
        return Err(Error::Usage(
            "--crash-at and --pause-at exist in test builds only".into(),
        ));
    }
    if !(0.0..=1.0).contains(&opts.min_live) {
        return Err(Error::Usage("--min-live is a share from 0 to 100%".into()));
    }
    let store = Store::open(&opts.store)?;
    let keyset = trusted_keyset(&store, rt, &opts.anchor)?;
    let spool = opts.spool.clone().unwrap_or_else(std::env::temp_dir);
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let mut lease = if opts.dry_run {
        None
    } else {
        Some(Held::acquire(&store, rt, opts.lease_ttl)?)
    };
    opts.hooks.at(CrashPoint::AfterLease);

    // Phase two of what earlier runs recorded.
    let mut mark = Mark::load(&store, rt, keyset.clone())?;
    report.segment_bytes_before = mark.segments.values().map(|i| i.size).sum();
    let mut swept = false;
    for c in mark.pending.clone() {
        let r = match &mut lease {
            Some(l) => sweep(&mark, l, &c, opts.writer_window, opts.grace, &opts.hooks)?,
            None => SweepReport {
                collection: c.key.clone(),
                waiting_for: waiting_for(&mark, &c, opts.writer_window),
                ..SweepReport::default()
            },
        };
        swept |= r.done;
        report.phase_two.push(r);
    }
    if swept {
        mark = Mark::load(&store, rt, keyset)?;
    }

    // Phase one.
    let p = plan(
        &mark,
        &PlanOptions {
            grace: opts.grace,
            min_live: opts.min_live,
        },
    );
    report.snapshots_kept = mark.listing.kept.len() as u64;
    report.snapshots_forgotten = mark.listing.forgotten.len() as u64;
    report.live_bytes = p.live_bytes;
    report.young_segments = p.young;
    report.protected_segments = p.protected;
    report.notes = mark
        .notes
        .iter()
        .chain(mark.blocking.iter())
        .map(|(object, note)| Note {
            object: object.clone(),
            note: note.clone(),
        })
        .collect();
    let one = &mut report.phase_one;
    for d in &p.dead {
        match d.reason {
            cbfs_format::CollectReason::Unnamed => one.unnamed_segments += 1,
            _ => one.dead_segments += 1,
        }
        one.reclaimable_bytes += d.length;
    }
    one.objects = p.objects.len() as u64;
    if !mark.blocking.is_empty() {
        // Nothing new is collected while an unreadable manifest stands.
        if let Some(l) = lease {
            l.release()?;
        }
        return Ok(report);
    }
    let Some(mut held) = lease else {
        for v in &p.victims {
            one.compacted_segments += 1;
            one.reclaimable_bytes += v.summary.segment_len();
        }
        one.bases_written = p.bases.iter().map(|(k, _)| k.clone()).collect();
        return Ok(report);
    };
    let (compacted, c) = compact(
        &mark,
        &mut held,
        &p.victims,
        &spool,
        opts.segment_size,
        &opts.hooks,
    )?;
    report.compaction = c;
    for v in p.victims.iter().filter(|v| compacted.contains(&v.segment)) {
        report.phase_one.compacted_segments += 1;
        report.phase_one.reclaimable_bytes += v.summary.segment_len();
    }
    report.phase_one.collection = record(&mark, &mut held, &p, &compacted, &opts.hooks)?;
    report.phase_one.bases_written = p.bases.iter().map(|(k, _)| k.clone()).collect();
    held.release()?;
    Ok(report)
}
