//! Following relocation records: where garbage collection moved the
//! members a signed manifest still names in their old segments.
//!
//! A record is not signed; what it buys a reader is only a place to look.
//! The member found there must still hash to the SHA-256 of the signed
//! manifest (checked as it is read), so a forged or stale record can make
//! one member fail, naming the record, and never restore other bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use cbfs_format::{ManifestEntry, Relocation, SegmentId, SegmentMode, SummaryEntry, layout};

use crate::error::{Error, Result};
use crate::source::ObjectSource;

/// How many times one member may have been moved: more is a loop or a
/// forgery.
const MAX_HOPS: usize = 64;

/// Where a member is now.
#[derive(Clone, Debug)]
pub struct Moved {
    /// The segment holding it now.
    pub segment: SegmentId,
    /// Its place there (as the record gives it).
    pub entry: SummaryEntry,
    /// That segment's mode.
    pub mode: SegmentMode,
    /// The relocation records followed, oldest move first.
    pub via: Vec<String>,
}

/// The store's relocation records, read as they are needed.
#[derive(Debug, Default)]
pub struct Relocations {
    by_old: HashMap<SegmentId, Vec<String>>,
    cache: Mutex<HashMap<String, Option<Relocation>>>,
    problems: Mutex<BTreeMap<String, String>>,
}

impl Relocations {
    /// None at all.
    pub fn none() -> Self {
        Relocations::default()
    }

    /// Lists the store's relocation records (one listing; each record is
    /// read when a member of its old segment is looked for).
    pub fn load(source: &dyn ObjectSource) -> Result<Self> {
        let mut by_old: HashMap<SegmentId, Vec<String>> = HashMap::new();
        for key in source.list(layout::RELOCATIONS)? {
            if let Some((old, _)) = layout::parse_relocation(&key) {
                by_old.entry(old).or_default().push(key);
            }
        }
        Ok(Relocations {
            by_old,
            ..Relocations::default()
        })
    }

    /// Whether no record exists.
    pub fn is_empty(&self) -> bool {
        self.by_old.is_empty()
    }

    /// Whether some record moved members out of `segment`.
    pub fn moves_out_of(&self, segment: &SegmentId) -> bool {
        self.by_old.contains_key(segment)
    }

    /// The segments some record moved members out of.
    pub fn old_segments(&self) -> impl Iterator<Item = &SegmentId> {
        self.by_old.keys()
    }

    /// The keys of the records that moved members out of `segment`.
    pub fn records_of(&self, segment: &SegmentId) -> &[String] {
        self.by_old.get(segment).map_or(&[], Vec::as_slice)
    }

    /// One record, read and parsed once; `None` (and a problem noted) if it
    /// cannot be read or does not fit its name.
    pub fn record(&self, source: &dyn ObjectSource, key: &str) -> Option<Relocation> {
        if let Some(r) = self.cache.lock().expect("relocation cache").get(key) {
            return r.clone();
        }
        let parsed = source
            .get(key)
            .and_then(|b| Relocation::from_bytes(&b).map_err(|e| Error::format(key, e)))
            .and_then(|r| {
                if layout::parse_relocation(key) == Some((r.old_segment(), r.new_segment())) {
                    Ok(r)
                } else {
                    Err(Error::Usage(format!(
                        "{key} holds the record of segment {} moved to {}, not what its name says",
                        r.old_segment(),
                        r.new_segment()
                    )))
                }
            });
        let r = match parsed {
            Ok(r) => Some(r),
            Err(e) => {
                self.problems
                    .lock()
                    .expect("relocation problems")
                    .insert(key.to_owned(), e.to_string());
                None
            }
        };
        self.cache
            .lock()
            .expect("relocation cache")
            .insert(key.to_owned(), r.clone());
        r
    }

    /// Where the member of `entry` is now, if a record moved it out of the
    /// segment the manifest names: the records are followed from segment
    /// to segment as long as one names the member with the manifest's
    /// SHA-256. `None` if no record moved it.
    pub fn locate(&self, source: &dyn ObjectSource, entry: &ManifestEntry) -> Option<Moved> {
        let mut at = entry.segment;
        let mut found: Option<Moved> = None;
        let mut seen = HashSet::from([at]);
        for _ in 0..MAX_HOPS {
            let next = self.records_of(&at).iter().find_map(|key| {
                let r = self.record(source, key)?;
                let e = r.entry(&entry.member)?;
                (e.sha256 == entry.sha256)
                    .then(|| (key.clone(), r.new_segment(), e.clone(), r.mode()))
            });
            let Some((key, segment, place, mode)) = next else {
                break;
            };
            if !seen.insert(segment) {
                self.problems.lock().expect("relocation problems").insert(
                    key.clone(),
                    format!("member {} is moved in a loop", entry.member),
                );
                break;
            }
            let mut via = found.map(|f| f.via).unwrap_or_default();
            via.push(key);
            found = Some(Moved {
                segment,
                entry: place,
                mode,
                via,
            });
            at = segment;
        }
        found
    }

    /// Records that could not be used, and why.
    pub fn problems(&self) -> Vec<(String, String)> {
        self.problems
            .lock()
            .expect("relocation problems")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
