//! The Merkle tree over a manifest's entries (RFC 9162 / RFC 6962 shape).
//!
//! ```text
//! leaf(e)    = SHA-256(0x00 || segment id || member id || member SHA-256)
//! node(l, r) = SHA-256(0x01 || l || r)
//! MTH({})    = SHA-256("")
//! MTH({e})   = leaf(e)
//! MTH(D[n])  = node(MTH(D[0..k]), MTH(D[k..n])), k the largest power of two < n
//! ```
//!
//! An odd node is never duplicated: the split rule promotes it unchanged.

use sha2::{Digest, Sha256};

use crate::ids::{MemberId, SegmentId};

/// One member of a snapshot: where it is and what its ciphertext hashes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManifestEntry {
    /// The segment holding the member.
    pub segment: SegmentId,
    /// The member.
    pub member: MemberId,
    /// SHA-256 of the member's data bytes (as in the segment's summary).
    pub sha256: [u8; 32],
}

impl ManifestEntry {
    /// The Merkle leaf hash of this entry.
    pub fn leaf_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([0x00]);
        h.update(self.segment.as_bytes());
        h.update(self.member.as_bytes());
        h.update(self.sha256);
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
            .map(|i| ManifestEntry {
                segment: SegmentId::from_bytes([1; 16]),
                member: MemberId::from_bytes((i as u128 + 1).to_be_bytes()),
                sha256: [i as u8; 32],
            })
            .collect()
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
