//! Snapshot manifests: every member of a snapshot under a Merkle root, signed.

use sha2::{Digest, Sha256};
use umbral_pre::{PublicKey, Signature, Signer};

use crate::codec::{Dec, Enc};
use crate::error::{Error, ObjectKind};
use crate::ids::{MemberId, SegmentId, SnapshotId};
use crate::merkle::{ManifestEntry, MerkleProof, Slots, merkle_root, prove};

const BRAND: &[u8; 8] = b"CBFSSNAP";
/// The version this release writes; version 1 (one-file members only,
/// entries without a slot bitmap) is still read.
pub(crate) const VERSION: u16 = 2;
const SIGNATURE_DOMAIN: &[u8] = b"cbfs manifest signature v1\0";
const ENTRY_LEN_V1: usize = 16 + 16 + 32;
/// A version 2 entry's least length: a version 1 entry, a length byte and
/// a one-byte bitmap.
const ENTRY_MIN_V2: usize = ENTRY_LEN_V1 + 2;
const KEY_LEN: usize = 33;
const SIGNATURE_LEN: usize = 64;

/// Collects a snapshot's entries, then signs them into a [`Manifest`].
#[derive(Clone, Debug)]
pub struct ManifestBuilder {
    pub(crate) snapshot: SnapshotId,
    pub(crate) sequence: u64,
    pub(crate) previous: [u8; 32],
    pub(crate) created_unix: i64,
    pub(crate) entries: Vec<ManifestEntry>,
}

impl ManifestBuilder {
    /// A builder for snapshot number `sequence`, following the manifest whose
    /// [`Manifest::hash`] is `previous` (`None` for the first snapshot).
    pub fn new(
        snapshot: SnapshotId,
        sequence: u64,
        previous: Option<[u8; 32]>,
        created_unix: i64,
    ) -> Self {
        ManifestBuilder {
            snapshot,
            sequence,
            previous: previous.unwrap_or([0; 32]),
            created_unix,
            entries: Vec::new(),
        }
    }

    /// Adds one member.
    pub fn push(&mut self, entry: ManifestEntry) {
        self.entries.push(entry);
    }

    /// Adds members.
    pub fn extend(&mut self, entries: impl IntoIterator<Item = ManifestEntry>) {
        self.entries.extend(entries);
    }

    /// Sorts the entries and fails if a (segment, member) pair appears
    /// twice or an entry has no slot.
    pub(crate) fn sort_unique(&mut self) -> Result<(), Error> {
        if let Some(e) = self.entries.iter().find(|e| e.slots.is_empty()) {
            return Err(Error::InvalidInput {
                reason: format!(
                    "snapshot {}: member {} of segment {} is listed with no file",
                    self.snapshot, e.member, e.segment
                ),
            });
        }
        self.entries.sort();
        if let Some(w) = self
            .entries
            .windows(2)
            .find(|w| (w[0].segment, w[0].member) == (w[1].segment, w[1].member))
        {
            return Err(Error::InvalidInput {
                reason: format!(
                    "snapshot {}: member {} of segment {} listed twice",
                    self.snapshot, w[0].member, w[0].segment
                ),
            });
        }
        Ok(())
    }

    /// Sorts the entries, computes the Merkle root and signs a full manifest.
    /// Fails if a (segment, member) pair appears twice.
    pub fn sign(mut self, signer: &Signer) -> Result<Manifest, Error> {
        self.sort_unique()?;
        let mut e = self.header(BRAND, VERSION, signer);
        e.u32(
            u32::try_from(self.entries.len()).map_err(|_| Error::InvalidInput {
                reason: "more than 2^32-1 entries".into(),
            })?,
        );
        for x in &self.entries {
            write_entry(&mut e, x);
        }
        Ok(self.seal(e, signer, false))
    }

    /// Starts an object: brand, version, and the fields every manifest has.
    pub(crate) fn header(&self, brand: &[u8; 8], version: u16, signer: &Signer) -> Enc {
        let mut e = Enc::with_brand(brand, version);
        e.raw(self.snapshot.as_bytes());
        e.u64(self.sequence);
        e.raw(&self.previous);
        e.i64(self.created_unix);
        e.raw(&signer.verifying_key().to_compressed_bytes());
        e
    }

    /// Ends an object: the Merkle root over the whole snapshot, then the signature.
    pub(crate) fn seal(self, mut e: Enc, signer: &Signer, delta: bool) -> Manifest {
        let root = merkle_root(&self.entries);
        e.raw(&root);
        let mut bytes = e.into_vec();
        let signature = signer.sign(&signed_message(&bytes));
        bytes.extend_from_slice(&signature.to_be_bytes());
        Manifest {
            snapshot: self.snapshot,
            sequence: self.sequence,
            previous: self.previous,
            created_unix: self.created_unix,
            writer: signer.verifying_key(),
            entries: self.entries,
            root,
            bytes,
            delta,
        }
    }
}

pub(crate) fn signed_message(body: &[u8]) -> Vec<u8> {
    [SIGNATURE_DOMAIN, body].concat()
}

/// A verified snapshot manifest: well-formed, sorted, Merkle root and signature checked.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub(crate) snapshot: SnapshotId,
    pub(crate) sequence: u64,
    pub(crate) previous: [u8; 32],
    pub(crate) created_unix: i64,
    pub(crate) writer: PublicKey,
    pub(crate) entries: Vec<ManifestEntry>,
    pub(crate) root: [u8; 32],
    pub(crate) bytes: Vec<u8>,
    /// Whether `bytes` is a delta against the previous manifest.
    pub(crate) delta: bool,
}

impl Manifest {
    /// Parses and verifies a manifest that must be signed by `trusted_writer`.
    pub fn from_bytes(bytes: &[u8], trusted_writer: &PublicKey) -> Result<Self, Error> {
        let m = Self::from_bytes_any_signer(bytes)?;
        if m.writer != *trusted_writer {
            return Err(Error::UntrustedSigner {
                snapshot: m.snapshot,
                found: hex::encode(m.writer.to_compressed_bytes()),
            });
        }
        Ok(m)
    }

    /// Parses and verifies a manifest against the key written inside it. This proves
    /// integrity only: check [`writer_key`](Self::writer_key) against a trusted key
    /// before relying on it, or use [`from_bytes`](Self::from_bytes).
    ///
    /// A delta manifest cannot stand alone: use [`resolve_manifest_chain`](crate::resolve_manifest_chain).
    pub fn from_bytes_any_signer(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.starts_with(crate::delta::DELTA_BRAND) {
            return Err(Error::InvalidInput {
                reason: "this is a delta manifest: resolve it against the manifests before it"
                    .into(),
            });
        }
        let (mut d, version) = Dec::brand(bytes, BRAND, ObjectKind::Manifest)?;
        if version != 1 && version != VERSION {
            return Err(Dec::unknown_version(ObjectKind::Manifest, version));
        }
        let snapshot = SnapshotId::from_bytes(d.array()?);
        let sequence = d.u64()?;
        let previous = d.array()?;
        let created_unix = d.i64()?;
        let at = d.pos();
        let key_bytes: [u8; KEY_LEN] = d.array()?;
        let writer = PublicKey::try_from_compressed_bytes(&key_bytes)
            .ok()
            .filter(|k| *k.to_compressed_bytes() == key_bytes)
            .ok_or_else(|| d.err_at(at, "invalid writer key"))?;
        let entries = read_entries(&mut d, "entries", version)?;
        let root: [u8; 32] = d.array()?;
        let signed_len = d.pos();
        let signature: [u8; SIGNATURE_LEN] = d.array()?;
        d.finish()?;
        if merkle_root(&entries) != root {
            return Err(Error::MerkleMismatch { snapshot });
        }
        let verified = Signature::try_from_be_bytes(&signature)
            .is_ok_and(|s| s.verify(&writer, &signed_message(&bytes[..signed_len])));
        if !verified {
            return Err(Error::BadSignature { snapshot });
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
            delta: false,
        })
    }

    /// Whether this manifest's object is a delta against the previous one
    /// (its [`entries`](Self::entries) are still the whole snapshot).
    pub fn is_delta(&self) -> bool {
        self.delta
    }

    /// The canonical bytes, signature included.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// SHA-256 of [`to_bytes`](Self::to_bytes): what the next manifest names as previous.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(&self.bytes).into()
    }

    /// The snapshot's id.
    pub fn snapshot_id(&self) -> SnapshotId {
        self.snapshot
    }
    /// The snapshot's sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
    /// Hash of the previous manifest, or `None` for the first.
    pub fn previous_hash(&self) -> Option<[u8; 32]> {
        (self.previous != [0; 32]).then_some(self.previous)
    }
    /// Creation time, seconds since the Unix epoch.
    pub fn created_unix(&self) -> i64 {
        self.created_unix
    }
    /// The key that signed it.
    pub fn writer_key(&self) -> &PublicKey {
        &self.writer
    }
    /// The entries, sorted by (segment, member).
    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }
    /// The Merkle root over the entries.
    pub fn merkle_root(&self) -> &[u8; 32] {
        &self.root
    }

    fn index_of(&self, segment: &SegmentId, member: &MemberId) -> Option<usize> {
        self.entries
            .binary_search_by(|e| (e.segment, e.member).cmp(&(*segment, *member)))
            .ok()
    }

    /// The entry of a member, if the snapshot has it.
    pub fn find(&self, segment: &SegmentId, member: &MemberId) -> Option<&ManifestEntry> {
        self.index_of(segment, member).map(|i| &self.entries[i])
    }

    /// An inclusion proof for a member, checkable against [`merkle_root`](Self::merkle_root).
    pub fn prove(&self, segment: &SegmentId, member: &MemberId) -> Option<MerkleProof> {
        prove(&self.entries, self.index_of(segment, member)?)
    }

    /// Checks that this manifest follows `previous`: a higher sequence number and
    /// `previous`'s hash in the chain field (detects rollback and forks).
    pub fn check_follows(&self, previous: &Manifest) -> Result<(), Error> {
        let broken = |reason| Error::BrokenChain {
            snapshot: self.snapshot,
            previous: previous.snapshot,
            reason,
        };
        if self.sequence <= previous.sequence {
            return Err(broken("sequence number does not increase"));
        }
        if self.previous != previous.hash() {
            return Err(broken("previous-manifest hash differs"));
        }
        Ok(())
    }
}

/// Writes one entry as version 2 has it: ids, hash, then `u8` length and
/// the slot bitmap.
pub(crate) fn write_entry(e: &mut Enc, x: &ManifestEntry) {
    e.raw(x.segment.as_bytes());
    e.raw(x.member.as_bytes());
    e.raw(&x.sha256);
    e.bytes8(&x.slots.to_bitmap());
}

/// Reads the last list of a manifest object (of `version` 1 or 2): a
/// count, then that many entries, sorted and unique by (segment, member),
/// then only the Merkle root and the signature. `what` names the list in
/// errors.
pub(crate) fn read_entries(
    d: &mut Dec<'_>,
    what: &str,
    version: u16,
) -> Result<Vec<ManifestEntry>, Error> {
    read_entry_list(d, what, version, 32 + SIGNATURE_LEN)
}

/// [`read_entries`] for a list followed by exactly `trailer` more bytes.
pub(crate) fn read_entry_list(
    d: &mut Dec<'_>,
    what: &str,
    version: u16,
    trailer: usize,
) -> Result<Vec<ManifestEntry>, Error> {
    let at = d.pos();
    let count = d.u32()? as usize;
    let least = if version == 1 {
        ENTRY_LEN_V1
    } else {
        ENTRY_MIN_V2
    };
    let needed = count
        .checked_mul(least)
        .and_then(|n| n.checked_add(trailer));
    let fits = if version == 1 {
        needed == Some(d.remaining())
    } else {
        needed.is_some_and(|n| n <= d.remaining())
    };
    if !fits {
        return Err(d.err_at(at, format!("{count} {what} do not fit the length")));
    }
    let mut entries: Vec<ManifestEntry> = Vec::with_capacity(count);
    for _ in 0..count {
        let at = d.pos();
        let mut entry = ManifestEntry::single(
            SegmentId::from_bytes(d.array()?),
            MemberId::from_bytes(d.array()?),
            d.array()?,
        );
        if version != 1 {
            let bitmap = d.bytes8()?;
            entry.slots = Slots::from_bitmap(bitmap)
                .ok_or_else(|| d.err_at(at, format!("{what}: a slot bitmap is not canonical")))?;
        }
        if entries
            .last()
            .is_some_and(|l| (l.segment, l.member) >= (entry.segment, entry.member))
        {
            return Err(d.err_at(at, format!("{what} are not sorted and unique")));
        }
        entries.push(entry);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use umbral_pre::SecretKey;

    fn build(n: usize, signer: &Signer) -> Manifest {
        let mut b = ManifestBuilder::new(SnapshotId::random(), 7, None, 1_700_000_000);
        for i in 0..n {
            b.push(ManifestEntry::single(
                SegmentId::from_bytes([(i % 3) as u8 + 1; 16]),
                MemberId::random(),
                [i as u8; 32],
            ));
        }
        b.sign(signer).unwrap()
    }

    #[test]
    fn sign_parse_round_trip_and_proofs() {
        let signer = Signer::new(SecretKey::random());
        let m = build(10, &signer);
        let bytes = m.to_bytes();
        let back = Manifest::from_bytes(&bytes, &signer.verifying_key()).unwrap();
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.entries(), m.entries());
        for e in back.entries() {
            let proof = back.prove(&e.segment, &e.member).unwrap();
            assert!(proof.verify(back.merkle_root(), e));
            assert!(back.find(&e.segment, &e.member).is_some());
        }
        assert!(
            back.prove(&SegmentId::random(), &MemberId::random())
                .is_none()
        );
        let other = Signer::new(SecretKey::random());
        let err = Manifest::from_bytes(&bytes, &other.verifying_key()).unwrap_err();
        assert_eq!(err.code(), "untrusted_signer");
    }

    #[test]
    fn chain() {
        let signer = Signer::new(SecretKey::random());
        let first = build(2, &signer);
        let next = ManifestBuilder::new(SnapshotId::random(), 8, Some(first.hash()), 1)
            .sign(&signer)
            .unwrap();
        next.check_follows(&first).unwrap();
        assert_eq!(
            first.check_follows(&next).unwrap_err().code(),
            "broken_chain"
        );
        let fork = ManifestBuilder::new(SnapshotId::random(), 9, Some([9; 32]), 1)
            .sign(&signer)
            .unwrap();
        assert_eq!(
            fork.check_follows(&first).unwrap_err().code(),
            "broken_chain"
        );
        assert_eq!(first.previous_hash(), None);
    }

    #[test]
    fn duplicates_are_refused() {
        let signer = Signer::new(SecretKey::random());
        let e = ManifestEntry::single(SegmentId::random(), MemberId::random(), [0; 32]);
        let mut b = ManifestBuilder::new(SnapshotId::random(), 1, None, 0);
        b.extend([
            e,
            ManifestEntry {
                sha256: [1; 32],
                ..e
            },
        ]);
        assert!(b.sign(&signer).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn round_trip(
            entries in proptest::collection::btree_map(
                (any::<[u8; 16]>(), any::<[u8; 16]>()),
                (any::<[u8; 32]>(), proptest::collection::btree_set(0usize..256, 1..6)),
                0..40),
            sequence in any::<u64>(),
            created in any::<i64>(),
            previous in proptest::option::of(any::<[u8; 32]>()),
        ) {
            let signer = Signer::new(SecretKey::random());
            let mut b = ManifestBuilder::new(SnapshotId::random(), sequence, previous, created);
            b.extend(entries.iter().map(|((s, m), (h, slots))| ManifestEntry {
                segment: SegmentId::from_bytes(*s),
                member: MemberId::from_bytes(*m),
                sha256: *h,
                slots: slots.iter().copied().collect(),
            }));
            let m = b.sign(&signer).unwrap();
            let back = Manifest::from_bytes(&m.to_bytes(), &signer.verifying_key()).unwrap();
            prop_assert_eq!(back.to_bytes(), m.to_bytes());
            prop_assert_eq!(back.entries(), m.entries());
            prop_assert_eq!(back.sequence(), sequence);
            prop_assert_eq!(back.created_unix(), created);
            prop_assert_eq!(back.previous_hash(), previous.filter(|p| *p != [0; 32]));
            prop_assert_eq!(back.entries().len(), entries.len());
        }

        #[test]
        fn any_bit_flip_is_refused(n in 0usize..6, at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let signer = Signer::new(SecretKey::random());
            let mut bytes = build(n, &signer).to_bytes();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(Manifest::from_bytes_any_signer(&bytes).is_err());
        }
    }
}
