//! The recall journal: what recalls did in a process that does not hold
//! the index (a fault-in handler, `cbfs-tier recall`), kept in
//! `INDEX/recalls.journal` until the next process that holds the index
//! takes it in.
//!
//! A recall changes the file's change time (its content and attributes
//! were written), so the index must learn the file's new stat, or the next
//! tier-out would archive the unchanged file again. And a recall that
//! proves the stored copy bad marks the file lost. One JSON object per
//! line, appended under a shared lock; taken in and emptied under an
//! exclusive one.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::index::{Batch, HsmRecord, Index};
use crate::scan::Stat;

/// The journal's file name in the index directory.
pub const JOURNAL: &str = "recalls.journal";

/// One thing a recall did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The path as archived (the stub record's), hex.
    pub path: String,
    /// The member and slot that were recalled.
    pub member: String,
    /// The slot.
    pub slot: u16,
    /// The inode.
    pub ino: u64,
    /// The file's stat after the recall (`None` for a loss).
    pub stat: Option<Stat>,
    /// Why the stored copy is bad (a loss).
    pub lost: Option<String>,
    /// When, Unix seconds.
    pub at: i64,
    /// A recall of the file begins: written, durably, before its stub
    /// record is removed, so that a recall killed after removing the record
    /// and before journaling its end is still known for one (see
    /// [`HsmRecord::recalling`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recalling: bool,
}

impl Entry {
    /// The path's bytes.
    pub fn path_bytes(&self) -> Option<Vec<u8>> {
        hex::decode(&self.path).ok()
    }
}

/// The journal of one index directory.
#[derive(Clone, Debug)]
pub struct Journal {
    path: PathBuf,
}

fn lock(file: &File, exclusive: bool) -> std::io::Result<()> {
    if exclusive {
        file.lock()
    } else {
        file.lock_shared()
    }
}

impl Journal {
    /// The journal of the index in `dir`.
    pub fn new(dir: &Path) -> Self {
        Journal {
            path: dir.join(JOURNAL),
        }
    }

    /// Appends an entry, durably.
    pub fn append(&self, entry: &Entry) -> Result<()> {
        self.append_all(std::slice::from_ref(entry))
    }

    /// Appends entries in one write, durably (one sync for all).
    pub fn append_all(&self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut line = Vec::new();
        for entry in entries {
            line.extend(serde_json::to_vec(entry).expect("entries serialize"));
            line.push(b'\n');
        }
        let io = |e| Error::io("cannot write the recall journal", &self.path, e);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        lock(&f, false).map_err(io)?;
        f.write_all(&line).map_err(io)?;
        f.sync_data().map_err(io)?;
        Ok(())
    }

    /// The entries not taken in yet, the newest per path last; a line that
    /// does not parse (a write cut by a crash) is skipped.
    pub fn read(&self) -> Result<Vec<Entry>> {
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("cannot read the recall journal", &self.path, e)),
        };
        let io = |e| Error::io("cannot read the recall journal", &self.path, e);
        lock(&f, false).map_err(io)?;
        Ok(parse(&f))
    }

    /// Takes every entry into `index` (one commit) and empties the journal.
    /// A recalled file's record gets its new stat only if it still names
    /// the member and inode that were recalled; a loss is kept in the
    /// path's tiering record.
    pub fn absorb(&self, index: &Index) -> Result<usize> {
        let mut f = match OpenOptions::new().read(true).write(true).open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io("cannot open the recall journal", &self.path, e)),
        };
        let io = |e| Error::io("cannot take in the recall journal", &self.path, e);
        lock(&f, true).map_err(io)?;
        let entries = parse(&f);
        if entries.is_empty() {
            return Ok(0);
        }
        // Each path's records looked up once, all at a time: a recall of
        // thousands of files journals two entries for each.
        let mut paths: Vec<Vec<u8>> = Vec::new();
        let mut at: HashMap<Vec<u8>, usize> = HashMap::new();
        let of: Vec<Option<usize>> = entries
            .iter()
            .map(|e| {
                let path = e.path_bytes()?;
                Some(*at.entry(path).or_insert_with_key(|p| {
                    paths.push(p.clone());
                    paths.len() - 1
                }))
            })
            .collect();
        let names: Vec<&[u8]> = paths.iter().map(Vec::as_slice).collect();
        let files = index.files(&names)?;
        // The entries that apply: each checked against the record as the
        // index holds it, not against what an earlier entry made of it.
        let applies: Vec<Option<usize>> = entries
            .iter()
            .zip(of)
            .map(|(e, k)| {
                let k = k?;
                let rec = files[k].as_ref()?;
                (rec.member.to_string() == e.member && rec.slot == e.slot && rec.stat.ino == e.ino)
                    .then_some(k)
            })
            .collect();
        // The tiering records of the paths they touch, and only those.
        let mut touched: Vec<usize> = applies.iter().flatten().copied().collect();
        touched.sort_unstable();
        touched.dedup();
        let touched_names: Vec<&[u8]> = touched.iter().map(|&k| paths[k].as_slice()).collect();
        let mut hsm: HashMap<usize, HsmRecord> = touched
            .iter()
            .copied()
            .zip(index.hsms(&touched_names)?)
            .map(|(k, h)| (k, h.unwrap_or_default()))
            .collect();
        let mut batch = Batch::default();
        for (e, k) in entries.iter().zip(applies) {
            let Some(k) = k else { continue };
            let h = hsm.get_mut(&k).expect("a touched path");
            match (&e.stat, &e.lost) {
                (Some(stat), _) => {
                    let mut rec = files[k].clone().expect("checked above");
                    rec.stat = *stat;
                    batch.put_file(&paths[k], &rec);
                    h.lost = None;
                    h.lost_at = None;
                    h.recalling = None;
                }
                (None, Some(why)) => {
                    h.lost = Some(why.clone());
                    h.lost_at = Some(e.at);
                    h.recalling = None;
                }
                (None, None) if e.recalling => h.recalling = Some(e.at),
                (None, None) => {}
            }
        }
        for k in touched {
            batch.put_hsm(&paths[k], &hsm[&k]);
        }
        if !batch.is_empty() {
            index.commit(batch)?;
        }
        f.set_len(0).map_err(io)?;
        f.rewind().map_err(io)?;
        f.sync_data().map_err(io)?;
        Ok(entries.len())
    }
}

fn parse(f: &File) -> Vec<Entry> {
    BufReader::new(f)
        .lines()
        .map_while(std::result::Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}
