//! The public restore entry points: a snapshot of a store, or loose segment files.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Seek as _;

use std::path::{Path, PathBuf};

use cbfs_format::{ManifestEntry, SegmentId, SegmentReader, SummaryEntry, layout};

use crate::engine::{Engine, RestoreOptions};
use crate::error::{Error, Result};
use crate::opener::LockboxOpener;
use crate::relocation::Relocations;
use crate::report::{Failure, Report};
use crate::sink::Sink;
use crate::snapshot::Snapshot;
use crate::source::{ObjectSource, ReadSeek, SegmentFile, check_key};

/// Restores a verified snapshot into `sink`.
///
/// Streaming, in bounded memory (apart from one small record per member).
/// Damage never stops it: a missing, truncated or altered segment, a damaged
/// lockbox or summary, a member moved to another segment, a wrong key each
/// become a [`Failure`] naming the object, and every intact member is still
/// restored. Members of scopes the opener has no key for are counted in
/// [`Report::skipped_scopes`].
///
/// It fails only if the output itself breaks (a tar stream that cannot be
/// written).
pub fn restore(
    source: &dyn ObjectSource,
    snapshot: &Snapshot,
    opener: &dyn LockboxOpener,
    opts: &RestoreOptions,
    sink: &mut dyn Sink,
) -> Result<Report> {
    let mut engine = Engine::new(source, opener, opts);
    engine.report.snapshot = Some(snapshot.info());
    engine.report.complete_by_manifest = true;
    engine
        .report
        .warnings
        .extend(snapshot.warnings().iter().cloned());
    plan_entries(&mut engine, source, snapshot.manifest().entries());
    finish(engine, sink)
}

/// Plans reading `entries` (sorted by segment): each from the segment the
/// manifest names, or, for members garbage collection moved, where the
/// relocation records say (still checked against the manifest's SHA-256).
pub(crate) fn plan_entries(
    engine: &mut Engine<'_>,
    source: &dyn ObjectSource,
    entries: &[ManifestEntry],
) {
    let relocations = Relocations::load(source).unwrap_or_else(|e| {
        engine.report.warnings.push(format!(
            "the relocation records could not be listed ({e}): members garbage collection moved cannot be found"
        ));
        Relocations::none()
    });
    // Members garbage collection moved are read where the relocation
    // records say, still checked against the manifest's SHA-256.
    let mut routed: BTreeMap<SegmentId, (Vec<ManifestEntry>, Vec<Relocated>)> = BTreeMap::new();
    for chunk in entries.chunk_by(|a, b| a.segment == b.segment) {
        let segment = chunk[0].segment;
        if !relocations.moves_out_of(&segment) {
            routed
                .entry(segment)
                .or_default()
                .0
                .extend_from_slice(chunk);
            continue;
        }
        for e in chunk {
            match relocations.locate(source, e) {
                Some(moved) => routed.entry(moved.segment).or_default().1.push((
                    *e,
                    moved.entry,
                    moved.via.join(" then "),
                )),
                None => routed.entry(segment).or_default().0.push(*e),
            }
        }
    }
    for (key, why) in relocations.problems() {
        engine
            .report
            .warnings
            .push(format!("relocation record {key} not used: {why}"));
    }
    for (segment, (named, relocated)) in &routed {
        tracing::debug!(%segment, members = named.len(), relocated = relocated.len(), "reading segment");
        engine.plan_store_segment(*segment, named, relocated);
    }
}

/// A member read from where relocation records moved it: the manifest's
/// entry, its place in the new segment, and the records followed.
type Relocated = (ManifestEntry, SummaryEntry, String);

pub(crate) fn finish(mut engine: Engine<'_>, sink: &mut dyn Sink) -> Result<Report> {
    engine.vet(sink.carries_links_that_leave());
    engine.emit(sink)?;
    sink.finish()?;
    engine.report.warnings.extend(sink.take_warnings());
    Ok(engine.report)
}

/// Segment files given one by one, seen as a store.
struct LooseFiles {
    files: HashMap<String, PathBuf>,
}

impl LooseFiles {
    fn path(&self, key: &str) -> Result<&PathBuf> {
        self.files.get(key).ok_or_else(|| Error::Missing {
            key: key.to_owned(),
        })
    }
}

impl ObjectSource for LooseFiles {
    fn describe(&self) -> String {
        "loose segment files".into()
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .files
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        std::fs::read(path).map_err(|e| Error::read(path.display().to_string(), e))
    }

    fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        let mut r = self.open(key)?;
        let name = || {
            self.path(key)
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        r.seek(std::io::SeekFrom::Start(range.start))
            .map_err(|e| Error::read(name(), e))?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(r, range.end.saturating_sub(range.start)),
            &mut out,
        )
        .map_err(|e| Error::read(name(), e))?;
        Ok(out)
    }

    fn size(&self, key: &str) -> Result<u64> {
        let path = self.path(key)?;
        std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|e| Error::read(path.display().to_string(), e))
    }

    fn reads_by_request(&self) -> bool {
        false
    }

    fn open(&self, key: &str) -> Result<Box<dyn ReadSeek + '_>> {
        let path = self.path(key)?;
        let file = File::open(path).map_err(|e| Error::read(path.display().to_string(), e))?;
        Ok(Box::new(SegmentFile::new(file)))
    }
}

/// Where the lockboxes of a loose segment file are: `DIR/<segment id>/` or
/// `DIR` itself when `--lockboxes DIR` is given; else, as in a copied store,
/// `lockboxes/<segment id>/` beside the segment file's directory.
fn lockbox_dir(segment_file: &Path, given: Option<&Path>, segment: &SegmentId) -> PathBuf {
    match given {
        Some(dir) => {
            let nested = dir.join(segment.to_string());
            if nested.is_dir() {
                nested
            } else {
                dir.to_owned()
            }
        }
        None => {
            let parent = segment_file.parent().unwrap_or(Path::new("."));
            let base = parent.parent().unwrap_or(Path::new("."));
            base.join("lockboxes").join(segment.to_string())
        }
    }
}

/// Restores loose segment files, read sequentially, with no manifest: the
/// last resort when a store's manifests are gone. NOTHING IS AUTHENTICATED
/// as the administrator's: anyone who holds the public keyset can make
/// members that decrypt, so these files may be anyone's, and nothing proves
/// that they are all there or current ([`Report::complete_by_manifest`] is
/// false). Never used in place of a missing or unreadable manifest: the
/// caller asks for it by name.
///
/// Lockboxes are looked up as [`lockbox_dir`] says: `<group id>.lockbox`
/// files, as the store names them.
pub fn restore_unauthenticated_segments(
    segment_files: &[PathBuf],
    lockboxes: Option<&Path>,
    opener: &dyn LockboxOpener,
    opts: &RestoreOptions,
    sink: &mut dyn Sink,
) -> Result<Report> {
    let mut loose = LooseFiles {
        files: HashMap::new(),
    };
    let mut report = Report::default();
    let mut segments: Vec<(SegmentId, PathBuf)> = Vec::new();
    for path in segment_files {
        let name = path.display().to_string();
        let header = File::open(path)
            .map_err(|e| Error::read(name.clone(), e))
            .and_then(|f| {
                SegmentReader::new(std::io::BufReader::new(f))
                    .map(|r| r.segment_id())
                    .map_err(|e| Error::format(name.clone(), e))
            });
        let segment = match header {
            Ok(s) => s,
            Err(e) => {
                report.fail(Failure::new(name, None, &e));
                continue;
            }
        };
        let key = layout::segment(&segment);
        if let Some(first) = loose.files.get(&key) {
            report.warnings.push(format!(
                "{name} is segment {segment} again (as {}); read once",
                first.display()
            ));
            continue;
        }
        loose.files.insert(key, path.clone());
        let dir = lockbox_dir(path, lockboxes, &segment);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if !file_name.ends_with(".lockbox") || !entry.path().is_file() {
                    continue;
                }
                let key = format!("{}{file_name}", layout::lockboxes_of(&segment));
                if check_key(&key).is_ok() {
                    loose.files.insert(key, entry.path());
                }
            }
        } else {
            report.warnings.push(format!(
                "no lockbox directory {} for segment {segment}: its encrypted members cannot be opened",
                dir.display()
            ));
        }
        segments.push((segment, path.clone()));
    }

    let mut engine = Engine::new(&loose, opener, opts);
    engine.report = report;
    engine.report.unauthenticated = true;
    engine.report.warnings.push(
        "UNAUTHENTICATED: loose segment files have no signed manifest, so nothing proves that they are the administrator's, complete or current; anyone with the public keyset can make members that decrypt".into(),
    );
    for (segment, path) in &segments {
        let key = layout::segment(segment);
        let object = path.display().to_string();
        let mut reader = match loose.open(&key) {
            Ok(r) => r,
            Err(e) => {
                engine.report.fail(Failure::new(object, None, &e));
                continue;
            }
        };
        let mode = match SegmentReader::new(&mut reader) {
            Ok(r) => r.mode(),
            Err(e) => {
                engine.report.fail(Failure::new(
                    object.clone(),
                    None,
                    &Error::format(object, e),
                ));
                continue;
            }
        };
        let lockboxes = engine.lockboxes(*segment, None);
        engine.plan_by_scan(
            &mut *reader,
            &key,
            &object,
            *segment,
            mode,
            None,
            &lockboxes,
        );
    }
    let mut report = finish(engine, sink)?;
    // Name lockbox files by their paths, not by store keys.
    for f in report
        .failures
        .iter_mut()
        .chain(report.damaged_objects.iter_mut())
    {
        if let Some(path) = loose.files.get(&f.object) {
            f.object = path.display().to_string();
        }
    }
    Ok(report)
}
