//! The Merkle tree over a manifest's entries (RFC 9162 / RFC 6962 shape).
//!
//! ```text
//! leaf(e)    = SHA-256(0x00 || segment id || member id || member SHA-256)
//!              when the entry is the member's first (or only) file alone;
//!              SHA-256(0x00 || segment id || member id || member SHA-256
//!                      || u8 len || live-file bitmap) otherwise
//! node(l, r) = SHA-256(0x01 || l || r)
//! MTH({})    = SHA-256("")
//! MTH({e})   = leaf(e)
//! MTH(D[n])  = node(MTH(D[0..k]), MTH(D[k..n])), k the largest power of two < n
//! ```
//!
//! An odd node is never duplicated: the split rule promotes it unchanged.

use sha2::{Digest, Sha256};

use crate::ids::{MemberId, SegmentId};

/// Files a member may hold at most: one, or a pack of small files.
pub const MAX_PACK_FILES: usize = 256;

/// Which files of a member a snapshot holds: a set of file numbers (slots)
/// below [`MAX_PACK_FILES`]. A member of one file has only slot 0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slots([u64; MAX_PACK_FILES / 64]);

impl Slots {
    /// Slot 0 alone: the whole of a one-file member.
    pub const FIRST: Slots = Slots([1, 0, 0, 0]);

    /// No slot.
    pub const fn empty() -> Self {
        Slots([0; MAX_PACK_FILES / 64])
    }

    /// Adds slot `i` (below [`MAX_PACK_FILES`]).
    pub fn insert(&mut self, i: usize) {
        assert!(i < MAX_PACK_FILES, "slot {i} out of range");
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// Whether slot `i` is in the set.
    pub fn contains(&self, i: usize) -> bool {
        i < MAX_PACK_FILES && self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// How many slots are in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The slots, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_PACK_FILES).filter(|i| self.contains(*i))
    }

    /// The highest slot in the set, if any.
    pub fn last(&self) -> Option<usize> {
        (0..MAX_PACK_FILES).rev().find(|i| self.contains(*i))
    }

    /// The canonical bitmap: bit `i % 8` of byte `i / 8` is slot `i`, and
    /// the last byte is not zero (1 to 32 bytes; empty for no slot).
    pub fn to_bitmap(&self) -> Vec<u8> {
        let len = self.last().map_or(0, |l| l / 8 + 1);
        (0..len)
            .map(|b| (self.0[b / 8] >> ((b % 8) * 8)) as u8)
            .collect()
    }

    /// Parses a canonical bitmap ([`to_bitmap`](Self::to_bitmap)): 1 to 32
    /// bytes, the last one not zero.
    pub fn from_bitmap(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || bytes.len() > MAX_PACK_FILES / 8 || bytes.last() == Some(&0) {
            return None;
        }
        let mut s = Slots::empty();
        for (b, byte) in bytes.iter().enumerate() {
            s.0[b / 8] |= u64::from(*byte) << ((b % 8) * 8);
        }
        Some(s)
    }
}

impl FromIterator<usize> for Slots {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        let mut s = Slots::empty();
        for i in iter {
            s.insert(i);
        }
        s
    }
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// One member of a snapshot: where it is, what its ciphertext hashes to,
/// and which of its files the snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManifestEntry {
    /// The segment holding the member.
    pub segment: SegmentId,
    /// The member.
    pub member: MemberId,
    /// SHA-256 of the member's data bytes (as in the segment's summary).
    pub sha256: [u8; 32],
    /// The member's files in the snapshot: [`Slots::FIRST`] for a member
    /// of one file; a subset of a pack's files once some were replaced or
    /// deleted.
    pub slots: Slots,
}

impl ManifestEntry {
    /// The entry of a whole one-file member.
    pub fn single(segment: SegmentId, member: MemberId, sha256: [u8; 32]) -> Self {
        ManifestEntry {
            segment,
            member,
            sha256,
            slots: Slots::FIRST,
        }
    }

    /// The Merkle leaf hash of this entry. An entry of slot 0 alone hashes
    /// as in version 1 manifests, which knew only one-file members.
    pub fn leaf_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([0x00]);
        h.update(self.segment.as_bytes());
        h.update(self.member.as_bytes());
        h.update(self.sha256);
        if self.slots != Slots::FIRST {
            let bitmap = self.slots.to_bitmap();
            h.update([bitmap.len() as u8]);
            h.update(&bitmap);
        }
        h.finalize().into()
    }
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Largest power of two strictly below `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// The Merkle root over the entries, in the order given.
pub fn merkle_root(entries: &[ManifestEntry]) -> [u8; 32] {
    let leaves: Vec<[u8; 32]> = entries.iter().map(ManifestEntry::leaf_hash).collect();
    mth(&leaves)
}

/// Proof that one entry is in a tree with a given root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleProof {
    /// The entry's index among the leaves.
    pub index: u64,
    /// How many leaves the tree has.
    pub leaf_count: u64,
    /// Sibling hashes from the leaf up.
    pub path: Vec<[u8; 32]>,
}

fn path(m: usize, leaves: &[[u8; 32]], out: &mut Vec<[u8; 32]>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &leaves[..k], out);
        out.push(mth(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], out);
        out.push(mth(&leaves[..k]));
    }
}

/// The inclusion proof for leaf `index`, or `None` if out of range.
pub(crate) fn prove(entries: &[ManifestEntry], index: usize) -> Option<MerkleProof> {
    if index >= entries.len() {
        return None;
    }
    let leaves: Vec<[u8; 32]> = entries.iter().map(ManifestEntry::leaf_hash).collect();
    let mut out = Vec::new();
    path(index, &leaves, &mut out);
    Some(MerkleProof {
        index: index as u64,
        leaf_count: entries.len() as u64,
        path: out,
    })
}

impl MerkleProof {
    /// Whether `entry` is leaf `index` of the tree with this `root` (RFC 9162 §2.1.3.2).
    pub fn verify(&self, root: &[u8; 32], entry: &ManifestEntry) -> bool {
        if self.index >= self.leaf_count {
            return false;
        }
        let (mut f, mut s) = (self.index, self.leaf_count - 1);
        let mut r = entry.leaf_hash();
        for p in &self.path {
            if s == 0 {
                return false;
            }
            if f & 1 == 1 || f == s {
                r = node(p, &r);
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            } else {
                r = node(&r, p);
            }
            f >>= 1;
            s >>= 1;
        }
        s == 0 && r == *root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize) -> Vec<ManifestEntry> {
        (0..n)
            .map(|i| {
                ManifestEntry::single(
                    SegmentId::from_bytes([1; 16]),
                    MemberId::from_bytes((i as u128 + 1).to_be_bytes()),
                    [i as u8; 32],
                )
            })
            .collect()
    }

    #[test]
    fn slots_bitmaps_are_canonical() {
        assert_eq!(Slots::FIRST.to_bitmap(), vec![1]);
        assert_eq!(Slots::from_bitmap(&[1]), Some(Slots::FIRST));
        let s: Slots = [0, 9, 63, 64, 255].into_iter().collect();
        let bm = s.to_bitmap();
        assert_eq!(bm.len(), 32);
        assert_eq!(Slots::from_bitmap(&bm), Some(s));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 9, 63, 64, 255]);
        assert_eq!(s.len(), 5);
        assert_eq!(Slots::from_bitmap(&[]), None);
        assert_eq!(Slots::from_bitmap(&[1, 0]), None);
        assert_eq!(Slots::from_bitmap(&[1; 33]), None);
        assert!(!Slots::empty().contains(0));
        assert!(Slots::empty().to_bitmap().is_empty());
        let two: Slots = [1].into_iter().collect();
        let e = ManifestEntry::single(SegmentId::from_bytes([1; 16]), MemberId::random(), [2; 32]);
        let other = ManifestEntry { slots: two, ..e };
        assert_ne!(e.leaf_hash(), other.leaf_hash());
    }

    #[test]
    fn small_trees_by_hand() {
        let e = entries(3);
        let l: Vec<_> = e.iter().map(ManifestEntry::leaf_hash).collect();
        assert_eq!(merkle_root(&e[..1]), l[0]);
        assert_eq!(merkle_root(&e[..2]), node(&l[0], &l[1]));
        // Three leaves: the third is promoted, not duplicated.
        assert_eq!(merkle_root(&e), node(&node(&l[0], &l[1]), &l[2]));
        assert_eq!(merkle_root(&[]), <[u8; 32]>::from(Sha256::digest([])));
    }

    #[test]
    fn every_proof_verifies_and_no_wrong_one_does() {
        for n in 1..=33 {
            let e = entries(n);
            let root = merkle_root(&e);
            for i in 0..n {
                let proof = prove(&e, i).unwrap();
                assert!(proof.verify(&root, &e[i]), "n={n} i={i}");
                let other = &e[(i + 1) % n];
                if n > 1 {
                    assert!(!proof.verify(&root, other), "n={n} i={i} wrong leaf");
                }
                let mut bad = proof.clone();
                if let Some(first) = bad.path.first_mut() {
                    first[0] ^= 1;
                    assert!(!bad.verify(&root, &e[i]));
                }
                let mut bad = proof.clone();
                bad.index = n as u64;
                assert!(!bad.verify(&root, &e[i]));
            }
            assert!(prove(&e, n).is_none());
        }
    }
}
