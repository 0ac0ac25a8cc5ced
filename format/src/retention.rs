//! Retention records: which snapshots are forgotten, decided by whoever
//! holds a signing key the keyset trusts (a registered writer, or the
//! administrator) and signed, so that a collector with no key can act on
//! the decision without trusting the store.
//!
//! ```text
//! "CBFSRETN" u16 version = 1
//! record id (16)  i64 created  signer key (33)
//! bytes16 policy              UTF-8, what decided it (for people)
//! u32 count, count × (u64 sequence, snapshot id (16), manifest hash (32))
//!                             sorted by (sequence, snapshot id), unique, count >= 1
//! signature (64)              over "cbfs retention signature v1\0" || every byte before it
//! ```

use umbral_pre::{PublicKey, Signer};

use crate::codec::{Dec, Enc};
use crate::error::{Error, ObjectKind};
use crate::ids::{RecordId, SnapshotId};
use crate::signing::{SIGNATURE_LEN, read_key, seal, verifies, write_key};

const BRAND: &[u8; 8] = b"CBFSRETN";
pub(crate) const VERSION: u16 = 1;
const DOMAIN: &[u8] = b"cbfs retention signature v1\0";
const ENTRY_LEN: usize = 8 + 16 + 32;
/// Longest policy text, in bytes.
pub const MAX_POLICY_LEN: usize = 4096;

/// One forgotten snapshot: which, and the hash of its manifest object, so
/// that a reader can tell the manifest a kept snapshot follows was
/// forgotten on purpose (and not hidden by the store).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ForgottenSnapshot {
    /// Its sequence number.
    pub sequence: u64,
    /// Its id.
    pub snapshot: SnapshotId,
    /// SHA-256 of its manifest object (full or delta).
    pub manifest_hash: [u8; 32],
}

/// A verified retention record: well-formed and signed by the key inside
/// it. Whether that key may forget these snapshots is the reader's call
/// (see [`signer`](Self::signer)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionRecord {
    id: RecordId,
    created_unix: i64,
    signer: PublicKey,
    policy: String,
    forgotten: Vec<ForgottenSnapshot>,
    bytes: Vec<u8>,
}

impl RetentionRecord {
    /// Signs a record forgetting `forgotten` (at least one snapshot; sorted
    /// and deduplicated here).
    pub fn sign(
        id: RecordId,
        created_unix: i64,
        policy: &str,
        mut forgotten: Vec<ForgottenSnapshot>,
        signer: &Signer,
    ) -> Result<Self, Error> {
        if policy.len() > MAX_POLICY_LEN {
            return Err(Error::InvalidInput {
                reason: format!("a retention policy text is at most {MAX_POLICY_LEN} bytes"),
            });
        }
        forgotten.sort();
        forgotten.dedup();
        if forgotten.is_empty() {
            return Err(Error::InvalidInput {
                reason: "a retention record forgets at least one snapshot".into(),
            });
        }
        if let Some(w) = forgotten
            .windows(2)
            .find(|w| (w[0].sequence, w[0].snapshot) == (w[1].sequence, w[1].snapshot))
        {
            return Err(Error::InvalidInput {
                reason: format!(
                    "snapshot {} (sequence {}) is named with two manifest hashes",
                    w[0].snapshot, w[0].sequence
                ),
            });
        }
        let mut e = Enc::with_brand(BRAND, VERSION);
        e.raw(id.as_bytes());
        e.i64(created_unix);
        write_key(&mut e, &signer.verifying_key());
        e.bytes16(policy.as_bytes());
        e.u32(
            u32::try_from(forgotten.len()).map_err(|_| Error::InvalidInput {
                reason: "more than 2^32-1 snapshots".into(),
            })?,
        );
        for f in &forgotten {
            e.u64(f.sequence);
            e.raw(f.snapshot.as_bytes());
            e.raw(&f.manifest_hash);
        }
        let bytes = seal(DOMAIN, e.into_vec(), signer);
        Ok(RetentionRecord {
            id,
            created_unix,
            signer: signer.verifying_key(),
            policy: policy.to_owned(),
            forgotten,
            bytes,
        })
    }

    /// Parses strictly and checks the signature against the key inside.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (mut d, version) = Dec::brand(bytes, BRAND, ObjectKind::Retention)?;
        if version != VERSION {
            return Err(Dec::unknown_version(ObjectKind::Retention, version));
        }
        let id = RecordId::from_bytes(d.array()?);
        let created_unix = d.i64()?;
        let signer = read_key(&mut d)?;
        let at = d.pos();
        let policy = std::str::from_utf8(d.bytes16()?)
            .map_err(|_| d.err_at(at, "the policy text is not UTF-8"))?
            .to_owned();
        if policy.len() > MAX_POLICY_LEN {
            return Err(d.err_at(
                at,
                format!("the policy text exceeds {MAX_POLICY_LEN} bytes"),
            ));
        }
        let at = d.pos();
        let count = d.u32()? as usize;
        if count == 0 {
            return Err(d.err_at(at, "a retention record forgets at least one snapshot"));
        }
        if count
            .checked_mul(ENTRY_LEN)
            .and_then(|n| n.checked_add(SIGNATURE_LEN))
            != Some(d.remaining())
        {
            return Err(d.err_at(at, format!("{count} entries do not fit the length")));
        }
        let mut forgotten: Vec<ForgottenSnapshot> = Vec::with_capacity(count);
        for _ in 0..count {
            let at = d.pos();
            let f = ForgottenSnapshot {
                sequence: d.u64()?,
                snapshot: SnapshotId::from_bytes(d.array()?),
                manifest_hash: d.array()?,
            };
            if forgotten
                .last()
                .is_some_and(|l| (l.sequence, l.snapshot) >= (f.sequence, f.snapshot))
            {
                return Err(d.err_at(at, "the snapshots are not sorted and unique"));
            }
            forgotten.push(f);
        }
        let signed_len = d.pos();
        let signature: [u8; SIGNATURE_LEN] = d.array()?;
        d.finish()?;
        if !verifies(DOMAIN, &bytes[..signed_len], &signature, &signer) {
            return Err(Error::BadRecordSignature {
                object: ObjectKind::Retention,
            });
        }
        Ok(RetentionRecord {
            id,
            created_unix,
            signer,
            policy,
            forgotten,
            bytes: bytes.to_vec(),
        })
    }

    /// The canonical bytes, signature included.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }
    /// The record's id.
    pub fn id(&self) -> RecordId {
        self.id
    }
    /// When it was made, seconds since the Unix epoch.
    pub fn created_unix(&self) -> i64 {
        self.created_unix
    }
    /// The key that signed it: a reader trusts the record only if this is a
    /// registered writer (for its own snapshots) or the administrator.
    pub fn signer(&self) -> &PublicKey {
        &self.signer
    }
    /// What decided it, as its signer wrote it.
    pub fn policy(&self) -> &str {
        &self.policy
    }
    /// The forgotten snapshots, sorted by sequence.
    pub fn forgotten(&self) -> &[ForgottenSnapshot] {
        &self.forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbral_pre::SecretKey;

    fn forgotten(n: u64) -> Vec<ForgottenSnapshot> {
        (1..=n)
            .map(|i| ForgottenSnapshot {
                sequence: i,
                snapshot: SnapshotId::random(),
                manifest_hash: [i as u8; 32],
            })
            .collect()
    }

    #[test]
    fn round_trip_and_every_flip_is_refused() {
        let signer = Signer::new(SecretKey::random());
        let mut list = forgotten(5);
        list.reverse();
        let r = RetentionRecord::sign(
            RecordId::random(),
            1_700_000_000,
            "keep-last 3",
            list,
            &signer,
        )
        .unwrap();
        assert_eq!(r.forgotten().len(), 5);
        assert!(r.forgotten().windows(2).all(|w| w[0] < w[1]));
        let bytes = r.to_bytes();
        let back = RetentionRecord::from_bytes(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.signer(), &signer.verifying_key());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x04;
            assert!(RetentionRecord::from_bytes(&b).is_err(), "flip at {i}");
        }
        for cut in [0, 9, 60, bytes.len() - 1] {
            assert!(RetentionRecord::from_bytes(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(RetentionRecord::from_bytes(&longer).is_err());
    }

    #[test]
    fn empty_duplicate_and_unknown_version_are_refused() {
        let signer = Signer::new(SecretKey::random());
        assert!(RetentionRecord::sign(RecordId::random(), 0, "", vec![], &signer).is_err());
        let mut two = forgotten(1);
        two.push(ForgottenSnapshot {
            manifest_hash: [9; 32],
            ..two[0]
        });
        assert!(RetentionRecord::sign(RecordId::random(), 0, "", two, &signer).is_err());
        let long = "x".repeat(MAX_POLICY_LEN + 1);
        assert!(
            RetentionRecord::sign(RecordId::random(), 0, &long, forgotten(1), &signer).is_err()
        );
        let mut bytes = RetentionRecord::sign(RecordId::random(), 0, "", forgotten(1), &signer)
            .unwrap()
            .to_bytes();
        bytes[9] = 2;
        assert_eq!(
            RetentionRecord::from_bytes(&bytes).unwrap_err().code(),
            "unknown_version"
        );
    }
}
