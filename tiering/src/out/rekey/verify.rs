//! Verification: every re-keyed entry read back from the new snapshot and
//! compared with what was noted of its old copy.

use std::collections::{BTreeSet, HashMap, HashSet};

use cbfs_format::{EntryKind, MemberId, Metadata};
use cbfs_restore::{MemberFile, RestoreOptions, Sink, Snapshot, restore_files};
use sha2::{Digest, Sha256};

use crate::agent::Agent;
use crate::error::{Error, Result, restore_error};
use crate::index::FileRecord;

use super::read::unasked;
use super::{BATCH_BYTES, BATCH_FILES, Note, Plan, RekeyReport, member_file, meta_hash};

/// Reads every noted entry back from the new snapshot and compares its
/// content and metadata with what was noted before it was stored again.
/// Returns the old members of the re-keyed entries.
pub(super) fn verify(
    agent: &Agent,
    plan: &Plan,
    source: &dyn cbfs_restore::ObjectSource,
    snapshot: &Snapshot,
    report: &mut RekeyReport,
) -> Result<HashSet<MemberId>> {
    let index = &agent.index;
    let mut old_ids: HashSet<MemberId> = HashSet::new();
    let mut mismatches: Vec<String> = Vec::new();
    let mut batch: Vec<(Vec<u8>, Note, FileRecord)> = Vec::new();
    let mut bytes = 0u64;
    let check = |batch: &mut Vec<(Vec<u8>, Note, FileRecord)>,
                 mismatches: &mut Vec<String>,
                 report: &mut RekeyReport|
     -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut wanted: Vec<MemberFile> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut pass = HashSet::new();
        for (_, _, rec) in batch.iter() {
            if seen.insert(member_file(rec)) {
                wanted.push(member_file(rec));
            }
            if let Some(target) = &rec.hardlink_to
                && let Some(t) = index.file(target)?
            {
                pass.insert(target.clone());
                if seen.insert(member_file(&t)) {
                    wanted.push(member_file(&t));
                }
            }
        }
        let expect: HashMap<Vec<u8>, Note> = batch.drain(..).map(|(p, n, _)| (p, n)).collect();
        let mut sink = VerifySink {
            expect,
            pass,
            current: None,
            verified: 0,
            mismatches: Vec::new(),
        };
        let restored = restore_files(
            source,
            snapshot,
            &plan.opener,
            &wanted,
            &RestoreOptions::default(),
            &mut sink,
        )
        .map_err(|e| restore_error(snapshot.key(), e))?;
        for f in restored.failures {
            mismatches.push(format!(
                "{} member {} ({}): {}",
                f.object,
                f.member.unwrap_or_default(),
                f.path.unwrap_or_default(),
                f.error
            ));
        }
        for path in sink.expect.keys() {
            if mismatches.len() < 1000 {
                mismatches.push(format!(
                    "{}: not read back from snapshot {}",
                    String::from_utf8_lossy(path),
                    snapshot.sequence()
                ));
            }
        }
        mismatches.extend(sink.mismatches);
        report.verified += sink.verified;
        Ok(())
    };
    let mut notes: Vec<(Vec<u8>, Note)> = Vec::new();
    index.rekey_for_each(|path, b| {
        notes.push((path.to_vec(), Note::decode(path, b)?));
        if notes.len() >= BATCH_FILES {
            for (path, note) in notes.drain(..) {
                if let Some(rec) = index.file(&path)?
                    && note.replaced_by(&rec)
                {
                    old_ids.insert(note.old_member);
                    bytes += rec.stat.size;
                    batch.push((path, note, rec));
                }
            }
            if bytes >= BATCH_BYTES || batch.len() >= BATCH_FILES {
                check(&mut batch, &mut mismatches, report)?;
                bytes = 0;
            }
        }
        Ok(())
    })?;
    for (path, note) in notes.drain(..) {
        if let Some(rec) = index.file(&path)?
            && note.replaced_by(&rec)
        {
            old_ids.insert(note.old_member);
            batch.push((path, note, rec));
        }
    }
    check(&mut batch, &mut mismatches, report)?;
    if !mismatches.is_empty() {
        return Err(Error::Integrity {
            object: snapshot.key().to_owned(),
            reason: format!(
                "{} re-keyed entr{} did not read back as they were (the re-key stays under way; \
                 nothing old was forgotten): {}",
                mismatches.len(),
                if mismatches.len() == 1 { "y" } else { "ies" },
                mismatches
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        });
    }
    Ok(old_ids)
}

/// Hashes what the new snapshot gives back, and compares.
struct VerifySink {
    expect: HashMap<Vec<u8>, Note>,
    pass: HashSet<Vec<u8>>,
    current: Option<(Metadata, Sha256)>,
    verified: u64,
    mismatches: Vec<String>,
}

impl VerifySink {
    fn compare(&mut self, meta: &Metadata, content: [u8; 32]) {
        let Some(note) = self.expect.remove(&meta.path) else {
            return;
        };
        let path = String::from_utf8_lossy(&meta.path);
        if note.content != content {
            self.mismatches
                .push(format!("{path}: its content differs from the old copy's"));
        } else if note.meta != meta_hash(meta) {
            self.mismatches
                .push(format!("{path}: its metadata differs from the old copy's"));
        } else {
            self.verified += 1;
        }
    }
}

impl Sink for VerifySink {
    fn begin_file(&mut self, meta: &Metadata) -> cbfs_restore::Result<()> {
        if !self.expect.contains_key(&meta.path) && !self.pass.contains(&meta.path) {
            return Err(unasked(&meta.path));
        }
        self.current = Some((meta.clone(), Sha256::new()));
        Ok(())
    }

    fn write_content(&mut self, data: &[u8]) -> cbfs_restore::Result<()> {
        if let Some((_, h)) = self.current.as_mut() {
            h.update(data);
        }
        Ok(())
    }

    fn commit_file(&mut self) -> cbfs_restore::Result<()> {
        if let Some((meta, h)) = self.current.take() {
            let content: [u8; 32] = h.finalize().into();
            self.compare(&meta, content);
        }
        Ok(())
    }

    fn abort_file(&mut self) {
        self.current = None;
    }

    fn add_entry(&mut self, meta: &Metadata) -> cbfs_restore::Result<()> {
        if matches!(meta.kind, EntryKind::File) {
            return Err(unasked(&meta.path));
        }
        let empty: [u8; 32] = Sha256::digest([]).into();
        self.compare(meta, empty);
        Ok(())
    }

    fn finish(&mut self) -> cbfs_restore::Result<()> {
        Ok(())
    }

    fn carries_links_that_leave(&self) -> bool {
        true
    }
}
