//! Run records: a writer's word that one of its runs, which started while
//! these collections were pending, has finished. Signed by the writer.
//!
//! A writer's runs follow one another (one run per index at a time), so a
//! finished run that started after a collection was recorded proves that
//! every earlier run of that writer is over: whatever it named is in a
//! snapshot the collector can see. Only then may the collection's second
//! phase delete anything.
//!
//! ```text
//! "CBFSRUNR" u16 version = 1
//! run id (16)  i64 started  i64 finished  writer key (33)
//! u64 snapshot                the sequence of the snapshot the run made (0: none)
//! u32 count, count × collection hash (32)
//!                             SHA-256 of each collection record pending when the
//!                             run started; sorted, unique, count >= 1
//! signature (64)              over "cbfs run record signature v1\0" || every byte before it
//! ```

use umbral_pre::{PublicKey, Signer};

use crate::codec::{Dec, Enc};
use crate::error::{Error, ObjectKind};
use crate::ids::RecordId;
use crate::signing::{SIGNATURE_LEN, read_key, seal, verifies, write_key};

const BRAND: &[u8; 8] = b"CBFSRUNR";
pub(crate) const VERSION: u16 = 1;
const DOMAIN: &[u8] = b"cbfs run record signature v1\0";

/// A verified run record: well-formed and signed by the key inside it
/// (whether that is a registered writer is the reader's call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    id: RecordId,
    started_unix: i64,
    finished_unix: i64,
    writer: PublicKey,
    snapshot: u64,
    collections: Vec<[u8; 32]>,
    bytes: Vec<u8>,
}

impl RunRecord {
    /// Signs the record of a run that saw `collections` (hashes of their
    /// records) pending when it started.
    pub fn sign(
        id: RecordId,
        started_unix: i64,
        finished_unix: i64,
        snapshot: Option<u64>,
        mut collections: Vec<[u8; 32]>,
        signer: &Signer,
    ) -> Result<Self, Error> {
        collections.sort();
        collections.dedup();
        if collections.is_empty() {
            return Err(Error::InvalidInput {
                reason: "a run record acknowledges at least one collection".into(),
            });
        }
        if finished_unix < started_unix {
            return Err(Error::InvalidInput {
                reason: "a run cannot finish before it started".into(),
            });
        }
        let mut e = Enc::with_brand(BRAND, VERSION);
        e.raw(id.as_bytes());
        e.i64(started_unix);
        e.i64(finished_unix);
        write_key(&mut e, &signer.verifying_key());
        e.u64(snapshot.unwrap_or(0));
        e.u32(collections.len() as u32);
        for c in &collections {
            e.raw(c);
        }
        let bytes = seal(DOMAIN, e.into_vec(), signer);
        Ok(RunRecord {
            id,
            started_unix,
            finished_unix,
            writer: signer.verifying_key(),
            snapshot: snapshot.unwrap_or(0),
            collections,
            bytes,
        })
    }

    /// Parses strictly and checks the signature against the key inside.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (mut d, version) = Dec::brand(bytes, BRAND, ObjectKind::RunRecord)?;
        if version != VERSION {
            return Err(Dec::unknown_version(ObjectKind::RunRecord, version));
        }
        let id = RecordId::from_bytes(d.array()?);
        let started_unix = d.i64()?;
        let at = d.pos();
        let finished_unix = d.i64()?;
        if finished_unix < started_unix {
            return Err(d.err_at(at, "the run finished before it started"));
        }
        let writer = read_key(&mut d)?;
        let snapshot = d.u64()?;
        let at = d.pos();
        let count = d.u32()? as usize;
        if count == 0
            || count
                .checked_mul(32)
                .and_then(|n| n.checked_add(SIGNATURE_LEN))
                != Some(d.remaining())
        {
            return Err(d.err_at(at, format!("{count} collections do not fit the length")));
        }
        let mut collections: Vec<[u8; 32]> = Vec::with_capacity(count);
        for _ in 0..count {
            let at = d.pos();
            let c: [u8; 32] = d.array()?;
            if collections.last().is_some_and(|l| *l >= c) {
                return Err(d.err_at(at, "the collections are not sorted and unique"));
            }
            collections.push(c);
        }
        let signed_len = d.pos();
        let signature: [u8; SIGNATURE_LEN] = d.array()?;
        d.finish()?;
        if !verifies(DOMAIN, &bytes[..signed_len], &signature, &writer) {
            return Err(Error::BadRecordSignature {
                object: ObjectKind::RunRecord,
            });
        }
        Ok(RunRecord {
            id,
            started_unix,
            finished_unix,
            writer,
            snapshot,
            collections,
            bytes: bytes.to_vec(),
        })
    }

    /// The canonical bytes, signature included.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }
    /// The run's id.
    pub fn id(&self) -> RecordId {
        self.id
    }
    /// When the run started, seconds since the Unix epoch.
    pub fn started_unix(&self) -> i64 {
        self.started_unix
    }
    /// When it finished.
    pub fn finished_unix(&self) -> i64 {
        self.finished_unix
    }
    /// The writer key that signed it.
    pub fn writer(&self) -> &PublicKey {
        &self.writer
    }
    /// The snapshot the run made, if any.
    pub fn snapshot(&self) -> Option<u64> {
        (self.snapshot != 0).then_some(self.snapshot)
    }
    /// Hashes of the collection records pending when the run started.
    pub fn collections(&self) -> &[[u8; 32]] {
        &self.collections
    }
    /// Whether the run saw the collection record whose hash is `hash`.
    pub fn acknowledges(&self, hash: &[u8; 32]) -> bool {
        self.collections.binary_search(hash).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbral_pre::SecretKey;

    #[test]
    fn round_trip_and_tampering() {
        let signer = Signer::new(SecretKey::random());
        let r = RunRecord::sign(
            RecordId::random(),
            10,
            20,
            Some(7),
            vec![[3; 32], [1; 32]],
            &signer,
        )
        .unwrap();
        let bytes = r.to_bytes();
        let back = RunRecord::from_bytes(&bytes).unwrap();
        assert_eq!(back, r);
        assert!(back.acknowledges(&[1; 32]) && back.acknowledges(&[3; 32]));
        assert!(!back.acknowledges(&[2; 32]));
        assert_eq!(back.snapshot(), Some(7));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x08;
            assert!(RunRecord::from_bytes(&b).is_err(), "flip at {i}");
        }
        assert!(RunRecord::sign(RecordId::random(), 10, 20, None, vec![], &signer).is_err());
        assert!(RunRecord::sign(RecordId::random(), 20, 10, None, vec![[1; 32]], &signer).is_err());
        let none = RunRecord::sign(RecordId::random(), 1, 1, None, vec![[1; 32]], &signer).unwrap();
        assert_eq!(
            RunRecord::from_bytes(&none.to_bytes()).unwrap().snapshot(),
            None
        );
    }
}
