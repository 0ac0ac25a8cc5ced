//! Delta manifests: a snapshot written as the changes from the one before.
//!
//! A full manifest costs 64 bytes per member, so a run that changes one file
//! in a large tree would otherwise write a manifest as large as the tree's
//! member list. A delta manifest lists only the members removed and added
//! since the previous manifest, plus the Merkle root and signature over the
//! *whole* resulting snapshot, so it proves exactly what a full one proves
//! once resolved. A writer starts a new full manifest every
//! [`FULL_MANIFEST_EVERY`] snapshots, or whenever the delta would not be
//! smaller, which bounds the chain a reader must fetch.
//!
//! ```text
//! "CBFSSDLT" u16 version=2
//! snapshot id [16]  sequence u64  previous manifest hash [32]  created i64
//! writer key [33]
//! removed count u32, then (segment id [16], member id [16]) sorted
//! added count u32, then (segment id [16], member id [16], sha256 [32],
//!                         u8 len, slot bitmap [len]) sorted
//! merkle root [32] (over the whole snapshot)
//! signature [64] over "cbfs manifest signature v1\0" || everything before it
//! ```

use umbral_pre::{PublicKey, Signature, Signer};

use crate::codec::Dec;
use crate::error::{Error, ObjectKind};
use crate::ids::{MemberId, SegmentId, SnapshotId};
use crate::manifest::{Manifest, ManifestBuilder, read_entries, signed_message, write_entry};
use crate::merkle::{ManifestEntry, merkle_root};

pub(crate) const DELTA_BRAND: &[u8; 8] = b"CBFSSDLT";
/// The version this release writes; version 1 (entries without a slot
/// bitmap) is still read.
pub(crate) const DELTA_VERSION: u16 = 2;
const FULL_BRAND: &[u8; 8] = b"CBFSSNAP";
const KEY_LEN: usize = 33;
const SIGNATURE_LEN: usize = 64;

/// A writer makes every this-many-th snapshot a full manifest.
pub const FULL_MANIFEST_EVERY: u64 = 16;

type Key = (SegmentId, MemberId);

fn key(e: &ManifestEntry) -> Key {
    (e.segment, e.member)
}

/// The unverified header of a manifest object, to find the chain it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestHeader {
    /// The snapshot's id.
    pub snapshot: SnapshotId,
    /// Its sequence number.
    pub sequence: u64,
    /// Hash of the previous manifest, if any.
    pub previous: Option<[u8; 32]>,
    /// Whether the object is a delta (needs the previous manifest).
    pub delta: bool,
}

impl ManifestHeader {
    /// Reads the header of a full or delta manifest without verifying it.
    pub fn peek(bytes: &[u8]) -> Result<Self, Error> {
        let delta = bytes.starts_with(DELTA_BRAND);
        let brand = if delta { DELTA_BRAND } else { FULL_BRAND };
        let (mut d, _version) = Dec::brand(bytes, brand, ObjectKind::Manifest)?;
        let snapshot = SnapshotId::from_bytes(d.array()?);
        let sequence = d.u64()?;
        let previous: [u8; 32] = d.array()?;
        Ok(ManifestHeader {
            snapshot,
            sequence,
            previous: (previous != [0; 32]).then_some(previous),
            delta,
        })
    }
}

impl ManifestBuilder {
    /// Signs this snapshot as a delta against `base`, which must be the
    /// previous manifest (its hash is this builder's `previous`). Falls back
    /// to a full manifest when that is not larger, or when the sequence
    /// number calls for a full one.
    pub fn sign_delta(mut self, signer: &Signer, base: &Manifest) -> Result<Manifest, Error> {
        self.sort_unique()?;
        if self.previous != base.hash() || self.sequence <= base.sequence() {
            return Err(Error::InvalidInput {
                reason: format!(
                    "snapshot {}: a delta must follow its base manifest directly",
                    self.snapshot
                ),
            });
        }
        // A chain is one writer's: after a writer key changes (a rotation),
        // its first snapshot is a full manifest.
        if base.writer_key() != &signer.verifying_key() {
            return self.sign(signer);
        }
        let (removed, added) = diff(base.entries(), &self.entries);
        let entry_len = |e: &ManifestEntry| 65 + e.slots.to_bitmap().len();
        let delta_len = removed.len() * 32 + added.iter().map(entry_len).sum::<usize>();
        let full_len: usize = self.entries.iter().map(entry_len).sum();
        if self.sequence % FULL_MANIFEST_EVERY == 1 || delta_len >= full_len {
            return self.sign(signer);
        }
        let mut e = self.header(DELTA_BRAND, DELTA_VERSION, signer);
        e.u32(removed.len() as u32);
        for (s, m) in &removed {
            e.raw(s.as_bytes());
            e.raw(m.as_bytes());
        }
        e.u32(added.len() as u32);
        for x in &added {
            write_entry(&mut e, x);
        }
        Ok(self.seal(e, signer, true))
    }
}

/// Members of `old` not in `new` (or changed), and members of `new` not in `old`.
fn diff(old: &[ManifestEntry], new: &[ManifestEntry]) -> (Vec<Key>, Vec<ManifestEntry>) {
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if key(a) == key(b) => {
                if a.sha256 != b.sha256 || a.slots != b.slots {
                    removed.push(key(a));
                    added.push(*b);
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if key(a) < key(b) => {
                removed.push(key(a));
                i += 1;
            }
            (Some(_), Some(b)) => {
                added.push(*b);
                j += 1;
            }
            (Some(a), None) => {
                removed.push(key(a));
                i += 1;
            }
            (None, Some(b)) => {
                added.push(*b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (removed, added)
}

/// A delta manifest parsed, with its signature checked against the key
/// inside it; its entries still need its base.
pub(crate) struct ParsedDelta {
    pub(crate) snapshot: SnapshotId,
    pub(crate) sequence: u64,
    pub(crate) previous: [u8; 32],
    pub(crate) created_unix: i64,
    pub(crate) writer: PublicKey,
    pub(crate) removed: Vec<Key>,
    pub(crate) added: Vec<ManifestEntry>,
    pub(crate) root: [u8; 32],
}

pub(crate) fn parse_delta(bytes: &[u8]) -> Result<ParsedDelta, Error> {
    let (mut d, version) = Dec::brand(bytes, DELTA_BRAND, ObjectKind::Manifest)?;
    if version != 1 && version != DELTA_VERSION {
        return Err(Dec::unknown_version(ObjectKind::Manifest, version));
    }
    let snapshot = SnapshotId::from_bytes(d.array()?);
    let sequence = d.u64()?;
    let previous: [u8; 32] = d.array()?;
    let created_unix = d.i64()?;
    let at = d.pos();
    let key_bytes: [u8; KEY_LEN] = d.array()?;
    let writer = PublicKey::try_from_compressed_bytes(&key_bytes)
        .ok()
        .filter(|k| *k.to_compressed_bytes() == key_bytes)
        .ok_or_else(|| d.err_at(at, "invalid writer key"))?;
    let at = d.pos();
    let n_removed = d.u32()? as usize;
    if n_removed.checked_mul(32).is_none_or(|n| n > d.remaining()) {
        return Err(d.err_at(
            at,
            format!("{n_removed} removed members do not fit the length"),
        ));
    }
    let mut removed: Vec<Key> = Vec::with_capacity(n_removed);
    for _ in 0..n_removed {
        let at = d.pos();
        let k = (
            SegmentId::from_bytes(d.array()?),
            MemberId::from_bytes(d.array()?),
        );
        if removed.last().is_some_and(|l| *l >= k) {
            return Err(d.err_at(at, "removed members are not sorted and unique"));
        }
        removed.push(k);
    }
    let added = read_entries(&mut d, "added members", version)?;
    let root: [u8; 32] = d.array()?;
    let signed_len = d.pos();
    let signature: [u8; SIGNATURE_LEN] = d.array()?;
    d.finish()?;
    let verified = Signature::try_from_be_bytes(&signature)
        .is_ok_and(|s| s.verify(&writer, &signed_message(&bytes[..signed_len])));
    if !verified {
        return Err(Error::BadSignature { snapshot });
    }
    Ok(ParsedDelta {
        snapshot,
        sequence,
        previous,
        created_unix,
        writer,
        removed,
        added,
        root,
    })
}

/// The entries a manifest object names, read from its layout alone,
/// without checking its signature, its Merkle root or its chain: all of a
/// full manifest's entries, and the entries a delta adds. For a collector
/// that must keep whatever an object it cannot verify might need; never
/// for restoring.
pub fn unverified_entries(bytes: &[u8]) -> Result<Vec<ManifestEntry>, Error> {
    let delta = bytes.starts_with(DELTA_BRAND);
    let brand = if delta { DELTA_BRAND } else { FULL_BRAND };
    let (mut d, version) = Dec::brand(bytes, brand, ObjectKind::Manifest)?;
    if version != 1 && version != DELTA_VERSION {
        return Err(Dec::unknown_version(ObjectKind::Manifest, version));
    }
    d.take(16 + 8 + 32 + 8 + KEY_LEN)?;
    if delta {
        let at = d.pos();
        let n_removed = d.u32()? as usize;
        let len = n_removed
            .checked_mul(32)
            .ok_or_else(|| d.err_at(at, "too many removed members"))?;
        d.take(len)?;
    }
    read_entries(&mut d, "entries", version)
}

/// The key that signed a delta manifest, once its layout and signature
/// check: whom a reader must trust before resolving the delta's chain.
pub fn delta_writer(bytes: &[u8]) -> Result<PublicKey, Error> {
    parse_delta(bytes).map(|p| p.writer)
}

impl Manifest {
    /// Parses and verifies a delta manifest against its base: the manifest
    /// just before it, already verified. Its signature must be by `trusted_writer`.
    pub fn from_delta_bytes(
        bytes: &[u8],
        trusted_writer: &PublicKey,
        base: &Manifest,
    ) -> Result<Manifest, Error> {
        let ParsedDelta {
            snapshot,
            sequence,
            previous,
            created_unix,
            writer,
            removed,
            added,
            root,
        } = parse_delta(bytes)?;
        if writer != *trusted_writer {
            return Err(Error::UntrustedSigner {
                snapshot,
                found: hex::encode(writer.to_compressed_bytes()),
            });
        }
        let broken = |reason| Error::BrokenChain {
            snapshot,
            previous: base.snapshot_id(),
            reason,
        };
        if previous != base.hash() {
            return Err(broken("previous-manifest hash differs from the base's"));
        }
        if sequence <= base.sequence() {
            return Err(broken("sequence number does not increase"));
        }
        let entries = apply(base.entries(), &removed, &added).map_err(broken)?;
        if merkle_root(&entries) != root {
            return Err(Error::MerkleMismatch { snapshot });
        }
        Ok(Manifest {
            snapshot,
            sequence,
            previous,
            created_unix,
            writer,
            entries,
            root,
            bytes: bytes.to_vec(),
            delta: true,
        })
    }
}

fn apply(
    base: &[ManifestEntry],
    removed: &[Key],
    added: &[ManifestEntry],
) -> Result<Vec<ManifestEntry>, &'static str> {
    let mut kept = Vec::with_capacity(base.len() + added.len());
    let mut r = removed.iter().peekable();
    for e in base {
        if r.peek() == Some(&&key(e)) {
            r.next();
        } else {
            kept.push(*e);
        }
    }
    if r.next().is_some() {
        return Err("it removes a member the base does not hold");
    }
    let mut out = Vec::with_capacity(kept.len() + added.len());
    let (mut i, mut j) = (0, 0);
    while i < kept.len() || j < added.len() {
        match (kept.get(i), added.get(j)) {
            (Some(a), Some(b)) if key(a) == key(b) => {
                return Err("it adds a member the base already holds");
            }
            (Some(a), Some(b)) if key(a) < key(b) => {
                out.push(*a);
                i += 1;
            }
            (Some(_), Some(b)) | (None, Some(b)) => {
                out.push(*b);
                j += 1;
            }
            (Some(a), None) => {
                out.push(*a);
                i += 1;
            }
            (None, None) => break,
        }
    }
    Ok(out)
}

/// Gathers the manifest objects a snapshot needs, oldest first and ending
/// with `target`: back through the deltas to the nearest full manifest.
/// `candidates(sequence)` gives the objects stored under that sequence
/// number; the one whose hash the later manifest names is taken.
pub fn gather_manifest_chain(
    target: Vec<u8>,
    candidates: impl FnMut(u64) -> Vec<Vec<u8>>,
) -> Result<Vec<Vec<u8>>, Error> {
    gather_manifest_chain_until(target, candidates, |_, _| false)
}

/// [`gather_manifest_chain`] that also stops at a delta manifest that
/// `has_base` accepts (given its header and its hash): one a
/// [`ManifestBase`](crate::ManifestBase) completes (see
/// [`resolve_manifest_chain_from`]), so that the manifests before it are
/// not needed (garbage collection may have deleted them).
pub fn gather_manifest_chain_until(
    target: Vec<u8>,
    mut candidates: impl FnMut(u64) -> Vec<Vec<u8>>,
    mut has_base: impl FnMut(&ManifestHeader, &[u8; 32]) -> bool,
) -> Result<Vec<Vec<u8>>, Error> {
    use sha2::{Digest, Sha256};
    let mut chain = vec![target];
    loop {
        let last = chain.last().expect("never empty");
        let head = ManifestHeader::peek(last)?;
        if !head.delta || has_base(&head, &Sha256::digest(last).into()) {
            break;
        }
        let (Some(previous), Some(seq)) = (head.previous, head.sequence.checked_sub(1)) else {
            return Err(Error::InvalidInput {
                reason: format!(
                    "delta manifest of snapshot {} names no previous manifest",
                    head.snapshot
                ),
            });
        };
        let found = candidates(seq)
            .into_iter()
            .find(|c| <[u8; 32]>::from(Sha256::digest(c)) == previous);
        match found {
            Some(bytes) => chain.push(bytes),
            None => {
                return Err(Error::InvalidInput {
                    reason: format!(
                        "snapshot {} is a delta, and the manifest it follows (sequence {seq}) is missing or altered",
                        head.snapshot
                    ),
                });
            }
        }
        if chain.len() as u64 > 4 * FULL_MANIFEST_EVERY + 1 {
            return Err(Error::InvalidInput {
                reason: format!(
                    "snapshot {}: the delta chain is implausibly long",
                    head.snapshot
                ),
            });
        }
    }
    chain.reverse();
    Ok(chain)
}

/// Verifies a chain of manifest objects, oldest first: the first must be a
/// full manifest, every later one must follow the one before it (full or
/// delta). Returns the last, resolved: its entries are the whole snapshot.
pub fn resolve_manifest_chain(
    chain: &[Vec<u8>],
    trusted_writer: &PublicKey,
) -> Result<Manifest, Error> {
    resolve_manifest_chain_from(chain, trusted_writer, None)
}

/// [`resolve_manifest_chain`] whose first object may be a delta manifest
/// completed by `base` (see [`Manifest::from_delta_with_base`]).
pub fn resolve_manifest_chain_from(
    chain: &[Vec<u8>],
    trusted_writer: &PublicKey,
    base: Option<&crate::ManifestBase>,
) -> Result<Manifest, Error> {
    let Some((first, rest)) = chain.split_first() else {
        return Err(Error::InvalidInput {
            reason: "an empty manifest chain".into(),
        });
    };
    let mut current = match base {
        Some(b) => Manifest::from_delta_with_base(first, trusted_writer, b)?,
        None => Manifest::from_bytes(first, trusted_writer)?,
    };
    for bytes in rest {
        let next = if bytes.starts_with(DELTA_BRAND) {
            Manifest::from_delta_bytes(bytes, trusted_writer, &current)?
        } else {
            let m = Manifest::from_bytes(bytes, trusted_writer)?;
            m.check_follows(&current)?;
            m
        };
        current = next;
    }
    Ok(current)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use umbral_pre::SecretKey;

    pub(crate) fn entry(i: u8) -> ManifestEntry {
        ManifestEntry::single(
            SegmentId::from_bytes([1; 16]),
            MemberId::from_bytes([i; 16]),
            [i; 32],
        )
    }

    /// Four snapshots, the first full, the others deltas.
    pub(crate) fn chain(signer: &Signer) -> Vec<Manifest> {
        let mut out: Vec<Manifest> = Vec::new();
        let mut set: Vec<ManifestEntry> = (1..=40).map(entry).collect();
        for seq in 1..=4u64 {
            if seq > 1 {
                set.retain(|e| e.member.as_bytes()[0] != seq as u8);
                set.push(entry(100 + seq as u8));
            }
            let mut b = ManifestBuilder::new(
                SnapshotId::random(),
                seq,
                out.last().map(Manifest::hash),
                seq as i64,
            );
            b.extend(set.iter().copied());
            let m = match out.last() {
                Some(base) => b.sign_delta(signer, base).unwrap(),
                None => b.sign(signer).unwrap(),
            };
            out.push(m);
        }
        out
    }

    #[test]
    fn deltas_are_small_and_resolve_to_the_whole_snapshot() {
        let signer = Signer::new(SecretKey::random());
        let ms = chain(&signer);
        assert!(!ms[0].is_delta());
        for m in &ms[1..] {
            assert!(m.is_delta());
            assert!(m.to_bytes().len() < 400, "{}", m.to_bytes().len());
        }
        let bytes: Vec<Vec<u8>> = ms.iter().map(Manifest::to_bytes).collect();
        let resolved = resolve_manifest_chain(&bytes, &signer.verifying_key()).unwrap();
        assert_eq!(resolved.entries(), ms[3].entries());
        assert_eq!(resolved.hash(), ms[3].hash());
        assert_eq!(resolved.entries().len(), 40);
        let by_seq = |seq: u64| vec![bytes[seq as usize - 1].clone()];
        assert_eq!(
            gather_manifest_chain(bytes[3].clone(), by_seq).unwrap(),
            bytes
        );
        let h = ManifestHeader::peek(&bytes[2]).unwrap();
        assert!(h.delta && h.sequence == 3 && h.previous == Some(ms[1].hash()));
    }

    #[test]
    fn a_pack_losing_files_is_a_change_of_its_slots() {
        let signer = Signer::new(SecretKey::random());
        let pack = |slots: &[usize]| ManifestEntry {
            slots: slots.iter().copied().collect(),
            ..entry(7)
        };
        let mut set: Vec<ManifestEntry> = (1..=6).map(entry).collect();
        set.push(pack(&[0, 1, 2, 200]));
        set.sort();
        let mut b = ManifestBuilder::new(SnapshotId::random(), 2, None, 0);
        b.extend(set.iter().copied());
        let base = b.sign(&signer).unwrap();
        // Files 1 and 200 of the pack were replaced or deleted.
        for e in set.iter_mut().filter(|e| e.member == entry(7).member) {
            *e = pack(&[0, 2]);
        }
        let mut b = ManifestBuilder::new(SnapshotId::random(), 3, Some(base.hash()), 1);
        b.extend(set.iter().copied());
        let next = b.sign_delta(&signer, &base).unwrap();
        assert!(next.is_delta());
        let chain = [base.to_bytes(), next.to_bytes()];
        let resolved = resolve_manifest_chain(&chain, &signer.verifying_key()).unwrap();
        assert_eq!(resolved.entries(), &set[..]);
        let got = resolved.find(&entry(7).segment, &entry(7).member).unwrap();
        assert_eq!(got.slots.iter().collect::<Vec<_>>(), vec![0, 2]);
        // A builder entry with no slot is refused.
        let mut b = ManifestBuilder::new(SnapshotId::random(), 1, None, 0);
        b.push(pack(&[]));
        assert!(b.sign(&signer).is_err());
    }

    #[test]
    fn broken_chains_and_tampering_are_refused() {
        let signer = Signer::new(SecretKey::random());
        let ms = chain(&signer);
        let bytes: Vec<Vec<u8>> = ms.iter().map(Manifest::to_bytes).collect();
        // A gap in the chain.
        let gap = vec![bytes[0].clone(), bytes[2].clone()];
        assert_eq!(
            resolve_manifest_chain(&gap, &signer.verifying_key())
                .unwrap_err()
                .code(),
            "broken_chain"
        );
        // A delta cannot stand alone.
        assert!(resolve_manifest_chain(&bytes[1..2], &signer.verifying_key()).is_err());
        // Another writer.
        let other = Signer::new(SecretKey::random());
        assert!(resolve_manifest_chain(&bytes, &other.verifying_key()).is_err());
        // Any bit flip in a delta.
        for i in (0..bytes[3].len()).step_by(7) {
            let mut chain = bytes.clone();
            chain[3][i] ^= 0x10;
            assert!(
                resolve_manifest_chain(&chain, &signer.verifying_key()).is_err(),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn a_new_writer_starts_with_a_full_manifest() {
        let old = Signer::new(SecretKey::random());
        let new = Signer::new(SecretKey::random());
        let base = chain(&old).pop().unwrap();
        let mut b = ManifestBuilder::new(SnapshotId::random(), 5, Some(base.hash()), 5);
        b.extend(base.entries().iter().copied());
        let m = b.sign_delta(&new, &base).unwrap();
        assert!(!m.is_delta());
        assert_eq!(m.writer_key(), &new.verifying_key());
        assert_eq!(m.previous_hash(), Some(base.hash()));
    }

    #[test]
    fn unverified_entries_read_the_layout_only() {
        let signer = Signer::new(SecretKey::random());
        let ms = chain(&signer);
        let mut full = ms[0].to_bytes();
        assert_eq!(unverified_entries(&full).unwrap(), ms[0].entries());
        // A broken signature does not stop it: it proves nothing anyway.
        let last = full.len() - 1;
        full[last] ^= 1;
        assert_eq!(unverified_entries(&full).unwrap(), ms[0].entries());
        // A delta names what it adds.
        let added = unverified_entries(&ms[1].to_bytes()).unwrap();
        assert_eq!(added, vec![entry(102)]);
        assert!(unverified_entries(b"CBFSSNAP").is_err());
        assert!(unverified_entries(&ms[1].to_bytes()[..60]).is_err());
    }

    #[test]
    fn full_manifest_every_n() {
        let signer = Signer::new(SecretKey::random());
        let base = {
            let mut b = ManifestBuilder::new(SnapshotId::random(), FULL_MANIFEST_EVERY, None, 0);
            b.extend((1..=20).map(entry));
            b.sign(&signer).unwrap()
        };
        let mut b = ManifestBuilder::new(
            SnapshotId::random(),
            FULL_MANIFEST_EVERY + 1,
            Some(base.hash()),
            0,
        );
        b.extend((1..=20).map(entry));
        assert!(!b.sign_delta(&signer, &base).unwrap().is_delta());
    }
}
