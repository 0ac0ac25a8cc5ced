//! Manifest bases: the whole entry list of a snapshot whose manifest is a
//! delta, so that the snapshot no longer needs the manifests before it.
//!
//! A delta manifest signs the Merkle root of the *whole* snapshot it
//! describes. A base lists that snapshot's entries; a reader checks them
//! against the root in the signed delta, so a base needs no signature of
//! its own and anyone (the key-less garbage collector) may write one: a
//! forged base does not match the root and is refused. Garbage collection
//! writes one for each kept snapshot whose previous manifest is forgotten,
//! before it deletes that manifest.
//!
//! ```text
//! "CBFSBASE" u16 version = 1
//! manifest hash (32)     SHA-256 of the delta manifest object it completes
//! u64 sequence  snapshot id (16)     as in that manifest
//! u32 count, count × entry (as in a version 2 manifest), sorted, unique
//! ```

use sha2::{Digest, Sha256};
use umbral_pre::PublicKey;

use crate::codec::{Dec, Enc};
use crate::delta::{ParsedDelta, parse_delta};
use crate::error::{Error, ObjectKind};
use crate::ids::SnapshotId;
use crate::manifest::{Manifest, read_entry_list, write_entry};
use crate::merkle::{ManifestEntry, merkle_root};

const BRAND: &[u8; 8] = b"CBFSBASE";
pub(crate) const VERSION: u16 = 1;
/// The manifest version whose entry layout a base uses.
const ENTRY_VERSION: u16 = 2;

/// The entries of one delta snapshot, bound to its manifest object by hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestBase {
    manifest_hash: [u8; 32],
    sequence: u64,
    snapshot: SnapshotId,
    entries: Vec<ManifestEntry>,
}

impl ManifestBase {
    /// The base of a resolved delta manifest.
    pub fn of(manifest: &Manifest) -> Result<Self, Error> {
        if !manifest.is_delta() {
            return Err(Error::InvalidInput {
                reason: format!(
                    "snapshot {} is a full manifest: it needs no base",
                    manifest.snapshot_id()
                ),
            });
        }
        Ok(ManifestBase {
            manifest_hash: manifest.hash(),
            sequence: manifest.sequence(),
            snapshot: manifest.snapshot_id(),
            entries: manifest.entries().to_vec(),
        })
    }

    /// SHA-256 of the delta manifest object this base completes.
    pub fn manifest_hash(&self) -> &[u8; 32] {
        &self.manifest_hash
    }
    /// The snapshot's sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
    /// The snapshot's id.
    pub fn snapshot_id(&self) -> SnapshotId {
        self.snapshot
    }
    /// The snapshot's entries, sorted.
    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    /// The canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut e = Enc::with_brand(BRAND, VERSION);
        e.raw(&self.manifest_hash);
        e.u64(self.sequence);
        e.raw(self.snapshot.as_bytes());
        e.u32(self.entries.len() as u32);
        for x in &self.entries {
            write_entry(&mut e, x);
        }
        e.into_vec()
    }

    /// Parses strictly. This proves nothing yet: check it against its
    /// manifest with [`Manifest::from_delta_with_base`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (mut d, version) = Dec::brand(bytes, BRAND, ObjectKind::ManifestBase)?;
        if version != VERSION {
            return Err(Dec::unknown_version(ObjectKind::ManifestBase, version));
        }
        let manifest_hash = d.array()?;
        let sequence = d.u64()?;
        let snapshot = SnapshotId::from_bytes(d.array()?);
        let entries = read_entry_list(&mut d, "entries", ENTRY_VERSION, 0)?;
        d.finish()?;
        Ok(ManifestBase {
            manifest_hash,
            sequence,
            snapshot,
            entries,
        })
    }
}

impl Manifest {
    /// Verifies a delta manifest completed by its `base`, without the
    /// manifests before it: the delta's signature must be by
    /// `trusted_writer`, the base must name the delta's hash, sequence and
    /// snapshot, and the base's entries must have the delta's Merkle root.
    /// The result proves what the delta resolved through its chain would.
    pub fn from_delta_with_base(
        bytes: &[u8],
        trusted_writer: &PublicKey,
        base: &ManifestBase,
    ) -> Result<Manifest, Error> {
        let ParsedDelta {
            snapshot,
            sequence,
            previous,
            created_unix,
            writer,
            root,
            ..
        } = parse_delta(bytes)?;
        if writer != *trusted_writer {
            return Err(Error::UntrustedSigner {
                snapshot,
                found: hex::encode(writer.to_compressed_bytes()),
            });
        }
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if hash != base.manifest_hash || sequence != base.sequence || snapshot != base.snapshot {
            return Err(Error::InvalidInput {
                reason: format!(
                    "the base of snapshot {} (sequence {}) is not the base of manifest {} (snapshot {snapshot}, sequence {sequence})",
                    base.snapshot,
                    base.sequence,
                    hex::encode(hash)
                ),
            });
        }
        if merkle_root(&base.entries) != root {
            return Err(Error::MerkleMismatch { snapshot });
        }
        Ok(Manifest {
            snapshot,
            sequence,
            previous,
            created_unix,
            writer,
            entries: base.entries.clone(),
            root,
            bytes: bytes.to_vec(),
            delta: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::tests::{chain, entry};
    use crate::{resolve_manifest_chain, resolve_manifest_chain_from};
    use umbral_pre::{SecretKey, Signer};

    #[test]
    fn a_base_stands_in_for_the_manifests_before_a_delta() {
        let signer = Signer::new(SecretKey::random());
        let ms = chain(&signer);
        let bytes: Vec<Vec<u8>> = ms.iter().map(Manifest::to_bytes).collect();
        let base = ManifestBase::of(&ms[1]).unwrap();
        let base = ManifestBase::from_bytes(&base.to_bytes()).unwrap();
        assert_eq!(ManifestBase::from_bytes(&base.to_bytes()).unwrap(), base);
        let alone =
            Manifest::from_delta_with_base(&bytes[1], &signer.verifying_key(), &base).unwrap();
        assert_eq!(alone.entries(), ms[1].entries());
        assert_eq!(alone.hash(), ms[1].hash());
        // The next delta resolves on top of it, without manifest 1.
        let resolved =
            resolve_manifest_chain_from(&bytes[1..3], &signer.verifying_key(), Some(&base))
                .unwrap();
        assert_eq!(resolved.entries(), ms[2].entries());
        assert_eq!(
            resolved.entries(),
            resolve_manifest_chain(&bytes[..3], &signer.verifying_key())
                .unwrap()
                .entries()
        );
        assert!(
            ManifestBase::of(&ms[0]).is_err(),
            "a full manifest needs no base"
        );
    }

    #[test]
    fn a_forged_or_misplaced_base_is_refused() {
        let signer = Signer::new(SecretKey::random());
        let ms = chain(&signer);
        let good = ManifestBase::of(&ms[1]).unwrap();
        let vk = signer.verifying_key();
        // One more entry: the root differs.
        let mut forged = good.clone();
        forged.entries.push(entry(99));
        forged.entries.sort();
        assert_eq!(
            Manifest::from_delta_with_base(&ms[1].to_bytes(), &vk, &forged)
                .unwrap_err()
                .code(),
            "merkle_mismatch"
        );
        // The base of another manifest.
        assert!(Manifest::from_delta_with_base(&ms[2].to_bytes(), &vk, &good).is_err());
        // Another writer.
        let other = Signer::new(SecretKey::random());
        assert_eq!(
            Manifest::from_delta_with_base(&ms[1].to_bytes(), &other.verifying_key(), &good)
                .unwrap_err()
                .code(),
            "untrusted_signer"
        );
        // Every bit flip of the bytes is refused or caught by the root.
        let bytes = good.to_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let ok = ManifestBase::from_bytes(&b)
                .and_then(|base| Manifest::from_delta_with_base(&ms[1].to_bytes(), &vk, &base));
            assert!(ok.is_err(), "flip at {i}");
        }
    }
}
