//! Members fetched whole and decrypted to their plaintext frames (still
//! compressed), as a verified snapshot names them: what a re-key seals
//! again under new keys without compressing anything a second time.
//!
//! Each member is located as a restore locates it (the segment's summary,
//! or the relocation records of a collection that moved it), its stored
//! bytes must hash to the signed manifest's SHA-256, and its payload must
//! authenticate to its end under the group key its lockbox gives.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cbfs_format::{GroupId, Keyring, Lockbox, MemberId, SegmentId, Summary, SummaryEntry, layout};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::opener::LockboxOpener;
use crate::relocation::Relocations;
use crate::select::{MemberFile, entry_of};
use crate::snapshot::Snapshot;
use crate::source::ObjectSource;

/// A member's plaintext frame, from [`FrameFetcher::fetch`].
pub struct Frame {
    /// The segment it was read from (another than the manifest's if a
    /// collection moved it).
    pub segment: SegmentId,
    /// The member.
    pub member: MemberId,
    /// Its bytes in the store.
    pub stored: u64,
    /// The decrypted payload: the compressed plaintext frame
    /// ([`cbfs_format::open_frame`] reads it).
    pub frame: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("segment", &self.segment)
            .field("member", &self.member)
            .field("stored", &self.stored)
            .finish_non_exhaustive()
    }
}

/// Fetches and decrypts members of one snapshot, keeping the summaries it
/// read and the group keys it opened for the next.
pub struct FrameFetcher<'a> {
    source: &'a dyn ObjectSource,
    snapshot: &'a Snapshot,
    opener: &'a dyn LockboxOpener,
    summaries: HashMap<SegmentId, Arc<Summary>>,
    relocations: Option<Relocations>,
    keys: Keyring,
    /// Groups whose lockboxes were tried, per segment (opened or not).
    tried: BTreeSet<(SegmentId, GroupId)>,
}

impl<'a> FrameFetcher<'a> {
    /// A fetcher of `snapshot`'s members, opening lockboxes with `opener`.
    pub fn new(
        source: &'a dyn ObjectSource,
        snapshot: &'a Snapshot,
        opener: &'a dyn LockboxOpener,
    ) -> Self {
        FrameFetcher {
            source,
            snapshot,
            opener,
            summaries: HashMap::new(),
            relocations: None,
            keys: Keyring::new(),
            tried: BTreeSet::new(),
        }
    }

    fn summary(&mut self, segment: &SegmentId) -> Result<Arc<Summary>> {
        if let Some(s) = self.summaries.get(segment) {
            return Ok(s.clone());
        }
        let key = layout::summary(segment);
        let summary = Arc::new(
            Summary::from_bytes(&self.source.get(&key)?).map_err(|e| Error::format(key, e))?,
        );
        self.summaries.insert(*segment, summary.clone());
        Ok(summary)
    }

    /// Opens the lockboxes of `group` in `segment` (the newest key version
    /// that opens wins), once.
    fn open_group(&mut self, segment: &SegmentId, group: &GroupId) -> Result<()> {
        if self.tried.contains(&(*segment, *group)) {
            return Ok(());
        }
        let prefix = layout::lockboxes_of(segment);
        let mut found: Vec<(u32, String)> = Vec::new();
        for key in self.source.list(&prefix)? {
            let name = key.rsplit('/').next().unwrap_or_default();
            if let Some((g, version)) = layout::parse_lockbox_name(name)
                && g == *group
            {
                found.push((version, key));
            }
        }
        found.sort_by_key(|(v, _)| std::cmp::Reverse(*v));
        for (version, key) in found {
            let lockbox = Lockbox::from_bytes(&self.source.get(&key)?)
                .map_err(|e| Error::format(key.clone(), e))?;
            if lockbox.group_id() != *group || lockbox.key_version() != version {
                continue;
            }
            if let Some(k) = self.opener.open(&lockbox)? {
                self.keys.insert(k);
                break;
            }
        }
        self.tried.insert((*segment, *group));
        Ok(())
    }

    /// Fetches `file`'s member whole, checks its bytes against the signed
    /// manifest, and decrypts it to its frame; a member whose stored bytes
    /// exceed `max_len` is not fetched (an error). Errors name the object.
    pub fn fetch(&mut self, file: &MemberFile, max_len: u64) -> Result<Frame> {
        let entry = entry_of(self.snapshot, file)?;
        let listed = self
            .summary(&file.segment)
            .map(|s| s.entry(&entry.member).cloned());
        let (segment, at): (SegmentId, SummaryEntry) = match listed {
            Ok(Some(at)) if at.sha256 == entry.sha256 => (file.segment, at),
            Err(e) if e.is_transient() => return Err(e),
            // Garbage collection may have moved it: follow the relocation
            // records (unsigned: the SHA-256 below is what proves the copy).
            _ => {
                if self.relocations.is_none() {
                    self.relocations = Some(Relocations::load(self.source)?);
                }
                let relocations = self.relocations.as_ref().expect("just loaded");
                match relocations.locate(self.source, &entry) {
                    Some(moved) => (moved.segment, moved.entry),
                    None => {
                        return Err(Error::HashMismatch {
                            object: layout::summary(&file.segment),
                            member: file.member.to_string(),
                            reason: "the segment's summary does not list the member as the \
                                     signed manifest names it, and no relocation record moves it"
                                .into(),
                        });
                    }
                }
            }
        };
        let seg_key = layout::segment(&segment);
        if at.data_len > max_len {
            return Err(Error::Usage(format!(
                "member {} of {seg_key}: {} bytes, more than the {max_len} fetched whole",
                file.member, at.data_len
            )));
        }
        let payload = self
            .source
            .get_range(&seg_key, at.data_offset..at.data_offset + at.data_len)?;
        let got: [u8; 32] = Sha256::digest(&payload).into();
        if payload.len() as u64 != at.data_len || got != entry.sha256 {
            return Err(Error::HashMismatch {
                object: seg_key,
                member: file.member.to_string(),
                reason: format!(
                    "its stored bytes ({} of {}) hash to {}, the signed manifest says {}",
                    payload.len(),
                    at.data_len,
                    hex::encode(got),
                    hex::encode(entry.sha256)
                ),
            });
        }
        let Some(group) = at.group else {
            return Err(Error::Usage(format!(
                "member {} of {seg_key} is not encrypted: there is no key to change",
                file.member
            )));
        };
        self.open_group(&segment, &group)?;
        let frame = cbfs_format::decrypt_frame(file.member, &payload, &self.keys)
            .map_err(|e| Error::format(seg_key.clone(), e))?;
        Ok(Frame {
            segment,
            member: file.member,
            stored: at.data_len,
            frame,
        })
    }
}
